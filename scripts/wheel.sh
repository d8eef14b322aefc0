#!/usr/bin/env bash
# The wheel a user copies to any x86_64 Linux machine with glibc 2.28 or later (manylinux_2_28)
# and Python 3.9 or later (abi3): the Python API and the console commands fleet-head,
# fleet-worker and fleet, so one `pip install` is a whole node. Linked by zig (PyPI's
# ziglang, through maturin) against glibc 2.28's symbols; the extension stripped, its debug
# info kept beside the wheel (debug/_native.abi3.so.debug: put it next to the installed
# _native.abi3.so, or in /usr/lib/debug/, for backtraces with files and lines); checked with
# auditwheel. Prints the wheel's path as its last line.
#   DIST_DIR (default dist/ in the checkout): where the wheel and debug/ go.
. "$(dirname "$0")/env.sh"
cd "$root"
dist="${DIST_DIR:-$root/dist}"
tools="$cache/wheel-tools"
if [ ! -x "$tools/bin/python" ]; then
    python3 -m venv "$tools"
fi
"$tools/bin/python" -m pip install --quiet "maturin==1.16.0" "ziglang==0.17.1" "auditwheel==6.8.2" "wheel==0.45.1"
export PATH="$tools/bin:$PATH"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Progress to stderr: the last line of stdout is the wheel's path.
maturin build --release --locked --zig --compatibility manylinux_2_28 \
    --manifest-path python-bindings/Cargo.toml --out "$work/built" >&2
built=("$work"/built/agentfleet-*.whl)
python -m wheel unpack --dest "$work/tree" "${built[0]}" >&2
tree=("$work"/tree/agentfleet-*)
native=("${tree[0]}"/agentfleet/_native*.so)
"$root/scripts/strip-debug.sh" "${native[0]}"
mkdir -p "$dist/debug"
mv "${native[0]}.debug" "$dist/debug/"
rm -f "$dist"/agentfleet-*.whl
# `wheel pack` writes RECORD again with the stripped file's hash and size.
python -m wheel pack --dest-dir "$dist" "${tree[0]}" >&2
wheel=("$dist"/agentfleet-*.whl)
# The glibc the wheel needs, as auditwheel reads its symbols: 2.28 at most (its tag says
# 2_28 either way: a wheel needing less runs on every 2.28 machine too).
shown="$(auditwheel show "${wheel[0]}" 2>&1)"
echo "$shown" >&2
needs="$(echo "$shown" | tr -s ' \n' ' ' | sed -n 's/.*consistent with the following platform tag: "manylinux_2_\([0-9]*\)_x86_64".*/\1/p')"
if [ -z "$needs" ] || [ "$needs" -gt 28 ]; then
    echo "wheel.sh: ${wheel[0]} needs a glibc newer than 2.28 (auditwheel show above)" >&2
    exit 1
fi
echo "${wheel[0]}"
