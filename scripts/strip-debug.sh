#!/usr/bin/env bash
# Strips each FILE (a binary or a shared library) in place and keeps its debug info beside
# it as FILE.debug, linked from FILE by a .gnu_debuglink: what ships is small, and a
# backtrace or a debugger finds file and line again once FILE.debug sits next to FILE (or in
# /usr/lib/debug/). Release builds keep line tables (Cargo.toml's profile) for this.
#   scripts/strip-debug.sh FILE...      needs binutils' objcopy
set -euo pipefail
if [ "$#" -eq 0 ]; then
    echo "usage: scripts/strip-debug.sh FILE..." >&2
    exit 2
fi
for file in "$@"; do
    debug="$file.debug"
    objcopy --only-keep-debug "$file" "$debug"
    chmod -x "$debug"
    # --strip-unneeded keeps what the dynamic loader needs (a library's exported symbols).
    objcopy --strip-unneeded --remove-section=.comment "$file"
    # The link holds the debug file's name and checksum, so a stale one is never used.
    (cd "$(dirname "$debug")" && objcopy --add-gnu-debuglink="$(basename "$debug")" "$(basename "$file")")
done
