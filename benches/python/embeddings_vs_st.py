"""all-MiniLM-L6-v2 on 1,000 short sentences, batches of 64, 2 threads: agentfleet's
`map_embed` through an embedded cluster against sentence-transformers on torch (CPU).

One side per process, because the two live in different virtualenvs (torch is for this
benchmark only):

    python embeddings_vs_st.py agentfleet MODEL_DIR   # prints one JSON line
    python embeddings_vs_st.py st MODEL_DIR

`scripts/bench-embeddings.sh` alternates the two sides round by round and prints medians and
the ratio. Both sides embed the same sentences, check each other's vectors through a cosine
check on a fixed pair, and time only the embedding call (after one warm-up batch)."""
import json
import math
import os
import pathlib
import sys
import time

SUBJECTS = ["The cat", "A young woman", "My neighbour", "The old dog", "A group of students",
            "The pilot", "Our team", "A small child", "The chef", "An engineer"]
VERBS = ["reads", "paints", "watches", "repairs", "describes", "sells", "finds", "loves",
         "carries", "ignores"]
OBJECTS = ["a red bicycle.", "the evening news in the kitchen.", "an old map of the city.",
           "fresh bread.", "a broken window near the station.", "the garden.",
           "a letter from a friend abroad.", "the new phone.", "a long novel about the sea.",
           "the stars."]
BATCH = 64
THREADS = 2


def sentences() -> "list[str]":
    return [f"{s} {v} {o}" for s in SUBJECTS for v in VERBS for o in OBJECTS]


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def agentfleet_side(model_dir: pathlib.Path, texts):
    import tempfile

    import agentfleet as af

    models = pathlib.Path(tempfile.mkdtemp())
    (models / "all-MiniLM-L6-v2").symlink_to(model_dir, target_is_directory=True)
    fleet = af.init(workers=2, models_dir=models, preload=["all-MiniLM-L6-v2"])
    try:
        agent = fleet.agent("embedder", model="all-MiniLM-L6-v2")
        agent.map_embed(texts[:BATCH], batch_size=BATCH, progress=False)  # warm-up
        started = time.perf_counter()
        vectors = agent.map_embed(texts, batch_size=BATCH, progress=False)
        return vectors, time.perf_counter() - started
    finally:
        fleet.shutdown()


def st_side(model_dir: pathlib.Path, texts):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.encode(texts[:BATCH], batch_size=BATCH)  # warm-up
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=BATCH, normalize_embeddings=True)
    return [list(map(float, v)) for v in vectors], time.perf_counter() - started


def main() -> None:
    side, model_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    texts = sentences()
    run = {"agentfleet": agentfleet_side, "st": st_side}[side]
    vectors, seconds = run(model_dir, texts)
    assert len(vectors) == len(texts), (len(vectors), len(texts))
    print(json.dumps({
        "side": side,
        "sentences": len(texts),
        "seconds": seconds,
        "sentences_per_s": len(texts) / seconds,
        # The same pair on both sides: the runs are comparable only if these agree.
        "cosine_0_1": cosine(vectors[0], vectors[1]),
        "threads": os.environ.get("RAYON_NUM_THREADS", ""),
    }))


if __name__ == "__main__":
    main()
