"""The API's shape (issue 53): registering apart from looking up, grouped options and
per-call variants, a class per event kind, `asubmit` giving a Task, one exception class per
error kind, and the old spellings failing with the new one."""

import asyncio
import re
import typing
from collections.abc import Iterator

import pytest

import agentfleet as af

RANDOM = "random.gguf"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[af.Fleet]:
    models = tmp_path_factory.mktemp("models")
    af.write_random_weight_model(models / RANDOM)
    fleet = af.init(workers=2, models_dir=models, preload=[RANDOM])
    yield fleet
    fleet.shutdown()


def completion_tokens(task: af.Task) -> int:
    task.result(timeout=60)
    completed = [e for e in task.events() if isinstance(e, af.Completed)]
    assert len(completed) == 1
    return completed[0].completion_tokens


def test_agent_registers_and_get_agent_looks_up(fleet: af.Fleet) -> None:
    fleet.agent("api-echo", "builtin:echo")
    found = fleet.get_agent("api-echo")
    assert found.name == "api-echo" and found.submit("a b").result(timeout=30) == "a b"
    with pytest.raises(af.UnknownAgentError) as missing:
        fleet.get_agent("api-nobody")
    assert missing.value.kind == "unknown_agent" and missing.value.task_id is None
    # The old lookup spelling says what to write instead.
    with pytest.raises(TypeError, match=r'fleet.get_agent\("api-echo"\)'):
        fleet.agent("api-echo")


def test_sampling_reaches_the_model_and_options_override_it_per_call(fleet: af.Fleet) -> None:
    agent = fleet.agent("api-sampler", RANDOM, sampling=af.Sampling(max_tokens=6, temperature=0.0))
    assert completion_tokens(agent.submit("hello")) == 6
    short = agent.options(sampling=af.Sampling(max_tokens=2))
    assert completion_tokens(short.submit("hello")) == 2
    assert short.map(["a", "b"]) == [short.submit(p).result(timeout=60) for p in ["a", "b"]]
    # Greedy stays greedy: the override changed max_tokens only, and a prefix of the longer answer.
    assert agent.submit("hello").result(timeout=60).startswith(short.submit("hello").result(timeout=60))
    # The handle it came from is unchanged, and options add up.
    assert completion_tokens(agent.submit("hello")) == 6
    assert completion_tokens(short.options(sampling=af.Sampling(seed=1)).submit("hello")) == 2
    # A context given with options is the tasks' conversation.
    talk = fleet.agent("api-talk", "builtin:echo").options(context_id="api-ctx")
    talk.submit("first").result(timeout=30)
    assert [t["role"] for t in fleet.context("api-ctx")["api-talk"]] == ["user", "assistant"]


def test_grouped_options_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="temperature"):
        af.Sampling(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        af.Sampling(max_tokens=0)
    with pytest.raises(ValueError, match="stop"):
        af.Sampling(stop="END")  # a str is not a list of them
    with pytest.raises(ValueError, match="memory is in bytes"):
        af.Resources(memory=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        af.Sampling(0.5)  # type: ignore[misc]  # keyword-only
    assert af.Resources(num_cpus=2).num_cpus == 2.0 and af.Sampling(stop=["x"]).stop == ("x",)


def test_resources_reach_the_scheduler(fleet: af.Fleet) -> None:
    # More CPUs than any worker has: no worker can ever run it, and the head says so.
    huge = fleet.agent("api-huge", "builtin:echo", resources=af.Resources(num_cpus=100_000))
    with pytest.raises(af.UnsupportedError) as refused:
        huge.submit("hi").result(timeout=30)
    assert refused.value.kind == "unsupported"
    fits = fleet.agent("api-fits", "builtin:echo", resources=af.Resources(num_cpus=0.5, memory=2**20))
    assert fits.submit("hi").result(timeout=30) == "hi"


def test_renamed_keywords_fail_naming_the_new_spelling(fleet: af.Fleet) -> None:
    for old, new in [
        ("temperature", "af.Sampling(temperature="),
        ("max_tokens", "af.Sampling(max_tokens="),
        ("cpus", "af.Resources(num_cpus="),
        ("memory_mb", "af.Resources(memory="),
        ("gpus", "af.Resources(num_gpus="),
    ]:
        with pytest.raises(TypeError, match=f"{old}= is now .*" + re.escape(new)):
            fleet.agent("api-old", "builtin:echo", **{old: 1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        fleet.agent("api-old", "builtin:echo", colour=1)
    with pytest.raises(TypeError, match="sampling is an af.Sampling"):
        fleet.agent("api-old", "builtin:echo", sampling={"temperature": 0})  # type: ignore[arg-type]
    for old, new in [
        ("TaskFailed", "af.FleetError"),
        ("Cancelled", "af.CanceledError"),
        ("NotFound", "af.UnknownAgentError"),
        ("InvalidArgument", "af.InvalidRequestError"),
        ("ResourceExhausted", "af.BusyError"),
    ]:
        said = rf"agentfleet.{old} is gone since 0.1: use .*{new}"
        with pytest.raises(AttributeError, match=said), pytest.warns(FutureWarning, match=said):
            getattr(af, old)
    # Python's own error for a from-import drops the message: the warning says it.
    with pytest.raises(ImportError), pytest.warns(FutureWarning, match="use af.CanceledError"):
        from agentfleet import Cancelled  # type: ignore[attr-defined]  # noqa: F401
    assert not hasattr(af, "AgentHost") and not hasattr(af, "run_head")
    # Per call, sampling may change; resources are the agent's.
    echo = fleet.agent("api-old", "builtin:echo")
    with pytest.raises(TypeError, match=r"agent.options: max_tokens= is now sampling=af.Sampling"):
        echo.options(max_tokens=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"cpus= is now the agent's: fleet.agent\(\.\.\., resources="):
        echo.options(cpus=2)  # type: ignore[call-arg]


def test_events_are_typed_per_kind(fleet: af.Fleet) -> None:
    echo = fleet.agent("api-typed", "builtin:echo")
    events = list(echo.stream("one two"))
    assert [type(e) for e in events] == [af.Submitted, af.Scheduled, af.Working, af.TextDelta, af.TextDelta, af.Completed]
    assert all(isinstance(e, af.Event) for e in events)
    assert [e.kind for e in events] == list(typing.get_args(af.EventKind)[:4]) + ["text_delta", "completed"]
    submitted, scheduled, _, first, _, completed = events
    assert submitted.agent == "api-typed" and scheduled.worker_id
    assert completed.is_final and not first.is_final and completed.completion_tokens == 2
    match first:
        case af.TextDelta(text):
            assert text == "one"
        case _:
            pytest.fail(f"not matched as a TextDelta: {first!r}")
    assert repr(first) == f"TextDelta(text='one', seq={first.seq}, attempt=1)"
    # A field another kind has: the error names this kind's fields.
    with pytest.raises(AttributeError, match="Completed has no attribute 'text'.*prompt_tokens, completion_tokens"):
        completed.text  # type: ignore[attr-defined]  # noqa: B018
    task = echo.submit("x")
    task.result(timeout=30)
    assert task.state in typing.get_args(af.TaskState) and task.state == "completed"


def test_asubmit_gives_an_awaitable_task(fleet: af.Fleet) -> None:
    echo = fleet.agent("api-async", "builtin:echo")

    async def run() -> None:
        task = await echo.asubmit("a b c")
        assert isinstance(task, af.Task) and task.id
        assert await task == "a b c"
        assert task.state == "completed" and task.done()
        assert await task.aresult() == "a b c"  # again, from the log
        tasks = await asyncio.gather(*(echo.asubmit(f"n{i}") for i in range(5)))
        assert await asyncio.gather(*tasks) == [f"n{i}" for i in range(5)]

    asyncio.run(run())


def test_each_error_kind_has_its_class() -> None:
    classes = {
        "internal": af.InternalError,
        "invalid_request": af.InvalidRequestError,
        "unknown_task": af.UnknownTaskError,
        "unknown_agent": af.UnknownAgentError,
        "busy": af.BusyError,
        "unavailable": af.UnavailableError,
        "unsupported": af.UnsupportedError,
        "not_cancelable": af.NotCancelableError,
        "content_type_not_supported": af.ContentTypeNotSupportedError,
        "unauthenticated": af.UnauthenticatedError,
        "permission_denied": af.PermissionDeniedError,
        "canceled": af.CanceledError,
    }
    assert set(classes) == set(typing.get_args(af.ErrorKind))
    for kind, cls in classes.items():
        assert issubclass(cls, af.FleetError) and cls.kind == kind
        assert cls.__name__ == "".join(w.title() for w in kind.split("_")) + "Error"


def test_a_failed_task_raises_its_kinds_class_with_its_id(fleet: af.Fleet) -> None:
    slow = fleet.agent("api-slow", "builtin:echo", model_options={"token_delay_ms": "200"})
    task = slow.submit(" ".join(["w"] * 100))
    task.cancel()
    with pytest.raises(af.CanceledError) as canceled:
        task.result(timeout=30)
    assert canceled.value.kind == "canceled" and canceled.value.task_id == task.id
    bad = fleet.agent("api-bad", "builtin:echo", model_options={"token_delay_ms": "soon"})
    failed = bad.submit("x")
    with pytest.raises(af.InvalidRequestError) as invalid:
        failed.result(timeout=30)
    assert invalid.value.task_id == failed.id
    with pytest.raises(af.InvalidRequestError) as in_map:
        bad.map(["a", "b"])
    assert in_map.value.task_id is not None


def test_a_refused_call_raises_the_kind_the_head_said(fleet: af.Fleet) -> None:
    # Two kinds share gRPC's NOT_FOUND: the head's error kind tells them apart.
    with pytest.raises(af.UnknownAgentError):
        fleet.get_agent("api-missing")
    with pytest.raises(af.UnknownTaskError, match="no stored state"):  # the head files it so
        fleet.actor_state("api-missing", context_id="never")
    with pytest.raises(af.UnauthenticatedError):
        af.init(fleet.address, token="wrong")

