#!/usr/bin/env bash
# The inference engine side by side with llama.cpp on the same GGUF files, in one run:
# the files given (scripts/bench-engine.sh FILE.gguf ...), else Qwen2.5-0.5B-shaped random
# weights (Q8_0 and Q4_K_M) from ../shared/tools/llm-anchor; prefill of 512 tokens,
# single-stream decode and aggregate decode of 8 and 32 sequences, 2 threads each. Rounds
# alternate engine and llama.cpp; the summary gives medians and ratios.
#   ANCHOR_DIR (default ~/.cache/agentfleet/llm-anchor): venv (llama-cpp-python builds from
#   PyPI, ~5 min on 2 cores), models/, results/.  ROUNDS (default 3).
#   LLAMACPP_VENV: another venv with llama-cpp-python (and gguf, numpy) to use instead, e.g.
#   one built without AMX where the native build crashes (BENCHMARKS.md says how).
. "$(dirname "$0")/env.sh"
cd "$root"
anchor_tools="$root/../shared/tools/llm-anchor"
anchor="${ANCHOR_DIR:-$cache/llm-anchor}"
rounds="${ROUNDS:-3}"
models="$anchor/models"
name=qwen2-0.5b-random
mkdir -p "$models" "$anchor/results"
venv="${LLAMACPP_VENV:-$anchor/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$anchor_tools/requirements.lock.txt" ||
        "$venv/bin/pip" install --quiet gguf numpy safetensors tokenizers llama-cpp-python
fi
py="$venv/bin/python"
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    if [ ! -f "$models/$name-F16.gguf" ]; then
        "$py" "$anchor_tools/make_random_gguf.py" --out-dir "$models" --name "$name"
    fi
    if [ ! -f "$models/$name-Q4_K_M.gguf" ]; then
        "$py" "$anchor_tools/quantize_gguf.py" --in "$models/$name-F16.gguf" --types Q8_0 Q4_K_M --threads 2
    fi
    files=("$models/$name-Q8_0.gguf" "$models/$name-Q4_K_M.gguf")
fi
cargo build --release -p fleet-benches --benches
out="$anchor/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
for round in $(seq "$rounds"); do
    for file in "${files[@]}"; do
        q="$(basename "$file" .gguf)"
        cargo bench --quiet -p fleet-benches --bench engine -- --json "$out/engine-$q-$round.json" "$file"
        "$py" "$anchor_tools/bench_llamacpp.py" "$file" --threads 2 --batch-sizes 1 8 32 \
            --reps 1 --json "$out/llamacpp-$q-$round.json"
    done
done
python3 "$root/benches/python/engine_vs_llamacpp.py" "$out"
