#!/usr/bin/env bash
# Every test: the Rust workspace (unit and multi-process cluster tests), then the Python
# package built and installed with pip (tests with warnings as errors, a per-test timeout,
# and mypy.stubtest of the stubs).
. "$(dirname "$0")/env.sh"
cd "$root"
cargo test --workspace --release
python_env maturin pytest pytest-timeout pytest-asyncio mypy
cd python-bindings && python -m pytest -p no:cacheprovider
