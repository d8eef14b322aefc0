#!/usr/bin/env bash
# GGUF blocks kept on the GPU (issue 57, item 3), on a machine with an NVIDIA GPU and the
# CUDA libraries PyTorch's wheels ship (no Rust, no network needed):
#
#   benches/gpu/run-blocks.sh GPU_BENCH OUT_DIR
#
# GPU_BENCH is the `gpu` benchmark built with the cuda feature (see run.sh). In one run:
# every block format's matmul and row kernels against their dequantized bf16 matrix, bit for
# bit, and their speed on Qwen2.5-7B's shapes (`--blocks`); a small random model whose layers
# take each format in turn, checked against the CPU engine (logits, greedy tokens, batched =
# alone) and timed; and a random Q4_K_M file of Qwen2.5-7B's shapes, its GPU memory and
# speed with blocks kept and with weights dequantized to bf16 at load.
set -uo pipefail
bench="$1"
out="$2"
mkdir -p "$out"
libs="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')"
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
models=/tmp/fleet-gpu-models
mkdir -p "$models"
step() {  # step NAME SECONDS COMMAND...: each step's output in OUT/NAME.log, on its own clock
    local name="$1" limit="$2"
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
}
step blocks 150 "$bench" --blocks --json "$out/blocks.json"
mixed="$models/mixed-formats.gguf"
[[ -f "$mixed" ]] || "$bench" --write-random-gguf mixed-formats "$mixed"
step mixed 200 env FLEET_GPU_WEIGHTS=blocks "$bench" --check --speed --batches 1,32,128 --json "$out/mixed.json" "$mixed"
big="$models/qwen2.5-7b-q4km.gguf"
[[ -f "$big" ]] || "$bench" --write-random-gguf qwen2.5-7b-q4km "$big"
step q4km-7b-blocks 200 env FLEET_GPU_WEIGHTS=blocks "$bench" --speed --batches 1,64 --json "$out/q4km-7b-blocks.json" "$big"
step q4km-7b-bf16 200 env FLEET_GPU_WEIGHTS=bf16 \
    "$bench" --speed --batches 1,64 --json "$out/q4km-7b-bf16.json" "$big"
