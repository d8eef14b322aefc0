"""llama.cpp's logits on the random-weight GGUF files a reference test writes (tests/moe.rs,
tests/families.rs; tests/common/mod.rs).

Run with llama-cpp-python 0.3.36 (../shared/tools/llm-anchor's lock file; scripts/bench-engine.sh
builds that venv), never in CI; for the test TEST:

    FLEET_TEST_REFERENCE_DIR=/tmp/t cargo test --release -p fleet-inference --test TEST
    python tests/common/make_reference.py /tmp/t > tests/TEST/reference.json

(the first run fails its SHA-256 check when the files changed; it has written them anyway).
Every *.gguf file of the folder, in name order. For each file: its SHA-256, and for a few prompts (token ids) the logits after the prompt and
32 greedy steps, each with llama.cpp's top-two gap. The KV cache is F32, as the engine's CPU
cache is.
"""

import hashlib
import json
import pathlib
import sys

import llama_cpp
import numpy as np

LENGTHS = [5, 23, 61]
STEPS = 32


def logits(llm: llama_cpp.Llama) -> np.ndarray:
    data = llama_cpp.llama_get_logits(llm.ctx)
    return np.ctypeslib.as_array(data, shape=(llm.n_vocab(),)).copy()


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    reference = {}
    for path in sorted(root.glob("*.gguf")):
        name = path.stem
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2,
                              verbose=False, type_k=0, type_v=0)
        vocab = llm.n_vocab()
        rng = np.random.default_rng(51)
        prompts = []
        for n in LENGTHS:
            # Ordinary tokens only: the last three ids are the chat's special tokens.
            ids = [int(i) for i in rng.integers(0, vocab - 3, n)]
            llm.reset()
            llm.eval(ids)
            first = logits(llm)
            steps = []
            values = first
            for _ in range(STEPS):
                a, b = np.argsort(-values)[:2]
                steps.append({"token": int(a), "margin": float(values[a] - values[b])})
                llm.eval([int(a)])
                values = logits(llm)
            prompts.append({"ids": ids, "logits": [float(v) for v in first], "steps": steps})
        del llm
        reference[name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                           "prompts": prompts}
    json.dump(reference, sys.stdout, indent=0)


if __name__ == "__main__":
    main()
