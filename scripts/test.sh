#!/usr/bin/env bash
# Every test: the Rust workspace (unit and multi-process cluster tests), then the Python
# package built and installed with pip (tests with warnings as errors, a per-test timeout,
# and mypy.stubtest of the stubs), then the A2A tests with the official a2a-sdk client.
. "$(dirname "$0")/env.sh"
cd "$root"
cargo test --workspace --release
python_env maturin pytest pytest-timeout pytest-asyncio mypy "a2a-sdk==1.3.0" httpx
(cd python-bindings && python -m pytest -p no:cacheprovider)
# A2A against real head and worker processes, with the official SDK as the client.
cd head-node/tests/a2a && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" python -m pytest -p no:cacheprovider
