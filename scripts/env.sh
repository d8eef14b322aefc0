# Shared by the scripts: a build cache outside the clone and a virtualenv with the Python
# package built from this checkout. Sourced, not run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
venv="${AGENTFLEET_VENV:-$cache/venv}"

# Creates the virtualenv (once) and installs the package into it, plus the given extra pip
# packages: from python-bindings/ (maturin builds it), or the wheel $AGENTFLEET_WHEEL names.
python_env() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    python -m pip install --quiet --upgrade pip
    if [ "$#" -gt 0 ]; then
        python -m pip install --quiet "$@"
    fi
    python -m pip install --quiet --force-reinstall --no-deps "${AGENTFLEET_WHEEL:-$root/python-bindings}"
}
