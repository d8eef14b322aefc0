#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, on a machine with an NVIDIA GPU, PyTorch and transformers
# (no Rust, no network needed). From a plain shell:
#
#   benches/gpu/run.sh GPU_BENCH OUT_DIR [SMOLLM2_GGUF]
#
# GPU_BENCH is the `gpu` benchmark binary built elsewhere with the cuda feature:
#   eval "$(scripts/cuda-toolchain.sh)"
#   cargo bench -p fleet-benches --features cuda --bench gpu --no-run
# It makes the Qwen2.5-0.5B-shaped random-weight Hugging Face folder with
# make_random_gguf.py (from $LLM_ANCHOR, default ../shared/tools/llm-anchor; needs the
# `gguf` package, or $GGUF_WHEEL to install it from), then on the same GPU in one run:
# transformers (bf16, static cache) and the engine on that folder, and the engine's
# checks against its CPU path on that folder and on SmolLM2 when given.
set -euo pipefail
bench="$1"
out="$2"
smollm2="${3:-}"
here="$(cd "$(dirname "$0")" && pwd)"
anchor="${LLM_ANCHOR:-$here/../../../shared/tools/llm-anchor}"
mkdir -p "$out"
# The CUDA libraries PyTorch's wheels ship (cuBLAS, NVRTC) serve the engine too.
libs="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')"
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
if [[ -n "${GGUF_WHEEL:-}" ]]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/gguf-site "$GGUF_WHEEL"
    export PYTHONPATH="/tmp/gguf-site:${PYTHONPATH:-}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
models=/tmp/fleet-gpu-models
if [[ ! -f "$models/qwen2-0.5b-random-hf/model.safetensors" ]]; then
    python3 "$anchor/make_random_gguf.py" --out-dir "$models" >"$out/make_model.log" 2>&1
fi
hf="$models/qwen2-0.5b-random-hf"
python3 "$here/transformers_bench.py" "$hf" | tee "$out/transformers.log"
"$bench" --speed --check --json "$out/engine.json" "$hf" 2>&1 | tee "$out/engine.log"
FLEET_GPU_BATCH_INVARIANT=0 "$bench" --speed --json "$out/engine-cublas-down.json" "$hf" 2>&1 \
    | tee "$out/engine-cublas-down.log"
# A prefill step's pieces alone: attention in tiles and a row at a time, the down projection.
"$bench" --parts --json "$out/parts.json" 2>&1 | tee "$out/parts.log"
if [[ -n "$smollm2" ]]; then
    "$bench" --check --speed --json "$out/smollm2.json" "$smollm2" 2>&1 | tee "$out/smollm2.log"
fi
