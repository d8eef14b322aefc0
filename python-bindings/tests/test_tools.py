"""Python functions as tools of the cluster's agents (`@fleet.tool`, `af.tool`): the calls
agents make reach the process that registered them, embedded or connected to a running
cluster; results, errors, timeouts and cancellations come back as the task's events; on
SmolLM2 (real weights) the model writes the call."""

import asyncio
import dataclasses
import enum
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Literal, Optional

import pydantic
import pytest

import agentfleet as af
from conftest import smollm2_gguf


def call(name: str, arguments: str) -> str:
    """What builtin:echo is told to write: a call of `name` (it answers with the result)."""
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def tool_events(task: af.Task) -> list[tuple[str, str, str, bool]]:
    """Each tool call and result: (kind, tool, the call's arguments or the result, is_error)."""
    events: list[tuple[str, str, str, bool]] = []
    for e in task.events():
        if isinstance(e, af.ToolCall):
            events.append((e.kind, e.tool, e.arguments, False))
        elif isinstance(e, af.ToolResult):
            events.append((e.kind, "", e.output, e.is_error))  # a result names its call only
    return events


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def fleet() -> Iterator[af.Fleet]:
    fleet = af.init(workers=2)
    yield fleet
    fleet.shutdown()


def test_an_agent_calls_a_function_of_this_process(fleet: af.Fleet) -> None:
    ran_on: list[tuple[int, str]] = []

    @fleet.tool
    def add(a: int, b: int) -> int:
        """Adds two integers.

        Args:
            a: the first number
            b: the second number
        """
        ran_on.append((os.getpid(), threading.current_thread().name))
        return a + b

    assert add.description == "Adds two integers."
    assert add.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "the first number"},
            "b": {"type": "integer", "description": "the second number"},
        },
        "required": ["a", "b"],
    }
    assert add(1, 2) == 3, "the function stays callable"
    ran_on.clear()
    calc = fleet.agent("calc", model="builtin:echo", tools=[add])
    task = calc.submit(call("add", '{"a": 20, "b": 22}'))
    assert task.result(timeout=30) == "42"
    assert tool_events(task) == [("tool_call", "add", '{"a":20,"b":22}', False), ("tool_result", "", "42", False)]
    assert ran_on == [(os.getpid(), ran_on[0][1])] and ran_on[0][1].startswith("agentfleet-tool")
    # Many at once: every call answered, each with its own arguments.
    tasks = [calc.submit(call("add", f'{{"a": {i}, "b": 1000}}')) for i in range(50)]
    assert [t.result(timeout=30) for t in tasks] == [str(i + 1000) for i in range(50)]


def test_an_exception_reaches_the_model_as_an_error_result(fleet: af.Fleet) -> None:
    def divide(a: float, b: float) -> float:
        """Divides a by b."""
        return a / b

    calc = fleet.agent("divider", model="builtin:echo", tools=[divide])
    task = calc.submit(call("divide", '{"a": 1, "b": 0}'))
    assert task.result(timeout=30) == "ZeroDivisionError: float division by zero"
    assert tool_events(task)[1][2:] == ("ZeroDivisionError: float division by zero", True)
    # Arguments the function does not take are an error the model reads, too.
    task = calc.submit(call("divide", '{"a": 1, "c": 2}'))
    task.result(timeout=30)
    _, _, error, is_error = tool_events(task)[1]
    assert is_error and error.startswith("TypeError") and "'c'" in error, error


def test_async_tools_run_on_an_event_loop_and_time_out(fleet: af.Fleet) -> None:
    canceled = threading.Event()

    @af.tool(timeout=1)
    async def lookup(key: str, wait: float = 0.0) -> dict[str, str]:
        """Looks a key up."""
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            canceled.set()
            raise
        return {"key": key, "value": key.upper()}

    agent = fleet.agent("looker", model="builtin:echo", tools=[lookup])
    task = agent.submit(call("lookup", '{"key": "abc"}'))
    assert task.result(timeout=30) == '{"key": "abc", "value": "ABC"}'
    started = time.monotonic()
    task = agent.submit(call("lookup", '{"key": "abc", "wait": 30}'))
    assert task.result(timeout=30) == "tool lookup did not answer within 1 s"
    assert time.monotonic() - started < 10
    assert tool_events(task)[1][2:] == ("tool lookup did not answer within 1 s", True)
    canceled.wait(timeout=10)
    assert canceled.is_set(), "the timed-out coroutine was not cancelled"


def test_a_canceled_task_cancels_its_running_tool(fleet: af.Fleet) -> None:
    started, canceled = threading.Event(), threading.Event()

    async def wait_forever() -> str:
        """Waits."""
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            canceled.set()
            raise
        return "never"

    agent = fleet.agent("waiter", model="builtin:echo", tools=[wait_forever])
    task = agent.submit(call("wait_forever", "{}"))
    assert started.wait(timeout=30)
    task.cancel()
    with pytest.raises(af.CanceledError):
        task.result(timeout=30)
    assert canceled.wait(timeout=10), "the tool ran on after its task was canceled"


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


@dataclasses.dataclass
class Place:
    city: str
    country: str = "FR"


class Window(pydantic.BaseModel):
    days: int = pydantic.Field(ge=1, le=14)
    hourly: bool = False


def test_type_hints_become_the_schema_and_arguments_their_types(fleet: af.Fleet) -> None:
    seen: list[tuple[object, ...]] = []

    @fleet.tool(name="forecast", description="The weather to come.")
    def weather(
        place: Place,
        window: Window,
        unit: Unit = Unit.CELSIUS,
        detail: Literal["short", "long"] = "short",
        tags: Optional[list[str]] = None,
        note: Annotated[str, "anything else"] = "",
    ) -> Window:
        seen.append((place, window, unit, detail, tags, note))
        return window

    properties = weather.parameters["properties"]
    assert weather.parameters["required"] == ["place", "window"]
    assert properties["place"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city"],
    }
    assert properties["window"]["properties"]["days"]["maximum"] == 14
    assert properties["unit"] == {"enum": ["celsius", "fahrenheit"]}
    assert properties["detail"] == {"enum": ["short", "long"], "default": "short"}
    assert properties["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None}
    assert properties["note"] == {"type": "string", "description": "anything else", "default": ""}
    agent = fleet.agent("forecaster", model="builtin:echo", tools=["forecast"])
    task = agent.submit(call("forecast", '{"place": {"city": "Lyon"}, "window": {"days": 3}, "unit": "fahrenheit", "tags": ["a"]}'))
    assert task.result(timeout=30) == '{"days":3,"hourly":false}'
    assert seen == [(Place("Lyon"), Window(days=3), Unit.FAHRENHEIT, "short", ["a"], "")]
    # A pydantic model checks its own fields: the model reads why.
    task = agent.submit(call("forecast", '{"place": {"city": "Lyon"}, "window": {"days": 30}}'))
    task.result(timeout=30)
    _, _, error, is_error = tool_events(task)[1]
    assert is_error and "ValidationError" in error, error


def test_bad_tools_are_refused_with_the_reason(fleet: af.Fleet) -> None:
    fleet.agent("taken", model="builtin:echo")

    def taken() -> str:
        return ""

    with pytest.raises(af.InvalidRequestError, match="an agent has that name"):
        fleet.tool(taken)

    @fleet.tool
    def hosted_name() -> str:
        """A tool."""
        return ""

    with pytest.raises(af.InvalidRequestError, match="a hosted tool is named"):
        fleet.agent("hosted_name", model="builtin:echo")
    with pytest.raises(TypeError, match="no JSON schema"):

        @fleet.tool
        def odd(x: complex) -> str:
            return ""

    with pytest.raises(ValueError, match="no usable name"):
        fleet.tool(lambda: "")
    with pytest.raises(af.InvalidRequestError, match="tool_choice"):
        fleet.agent("chooser", model="builtin:echo", tools=[hosted_name], tool_choice="other")


def test_a_tool_on_a_remote_cluster_runs_in_the_registering_process(remote_cluster: str) -> None:
    fleet = af.init(remote_cluster, token="s3cret")
    calls: list[str] = []

    @fleet.tool
    def shout(text: str) -> str:
        """Shouts."""
        calls.append(text)
        return text.upper() + "!"

    # The remote worker is on a mesh: hosted tools still go through the head.
    agent = fleet.agent("shouter", model="builtin:echo", tools=[shout])
    task = agent.submit(call("shout", '{"text": "hi"}'))
    assert task.result(timeout=30) == "HI!"
    assert calls == ["hi"]
    # Once its host is gone the tool answers with an error the model reads.
    fleet.shutdown()
    other = af.init(remote_cluster, token="s3cret")
    task = other.get_agent("shouter").submit(call("shout", '{"text": "hi"}'))
    assert task.result(timeout=30) == "tool shout has no process hosting it now (its host disconnected)"
    assert calls == ["hi"]


def test_smollm2_calls_a_python_tool(tmp_path: pathlib.Path) -> None:
    (tmp_path / "smollm2.gguf").symlink_to(smollm2_gguf())
    cities: list[str] = []
    with af.init(workers=1, models_dir=tmp_path) as fleet:

        @fleet.tool
        def get_weather(city: str) -> str:
            """Returns the current weather in a city."""
            cities.append(city)
            return f"It is sunny and 21 degrees in {city}."

        agent = fleet.agent(
            "weather",
            model="smollm2.gguf",
            instructions="Use the get_weather tool to answer questions about the weather.",
            tools=[get_weather],
            tool_choice="required",
            sampling=af.Sampling(temperature=0.0, max_tokens=64),
        )
        task = agent.submit("What is the weather in Paris?")
        task.result(timeout=120)
        events = tool_events(task)
        assert events[0] == ("tool_call", "get_weather", '{"city":"Paris"}', False)
        assert events[1] == ("tool_result", "", "It is sunny and 21 degrees in Paris.", False)
        assert cities == ["Paris"]


def test_a_tool_gets_the_files_given_with_the_calling_task(fleet: af.Fleet) -> None:
    """A parameter typed list[af.AgentFile] takes the task's files (from submit(files=) or
    A2A file parts); the model does not see it and cannot forge it; a model agent with such
    a tool takes binary files, and its model reads their names."""
    import base64
    import json
    import urllib.request

    @fleet.tool
    def measure(unit: str, files: list[af.AgentFile]) -> str:
        """Measures the files given with the task."""
        return ", ".join(f"{f.name}:{f.media_type}={len(f.data)} {unit}" for f in files)

    assert measure.parameters == {"type": "object", "properties": {"unit": {"type": "string"}}, "required": ["unit"]}
    agent = fleet.agent("measurer", model="builtin:echo", tools=[measure])
    png = b"\x89PNG\r\n\x1a\n" + bytes(300)
    files = [af.AgentFile("a.png", "image/png", png), af.AgentFile("b.bin", "application/octet-stream", b"xyz")]
    task = agent.submit(call("measure", '{"unit": "bytes", "files": ["forged.txt"]}'), files=files)
    answer = task.result(timeout=30)
    assert answer.endswith("a.png:image/png=308 bytes, b.bin:application/octet-stream=3 bytes"), answer
    # builtin:echo repeats its prompt: the model was told which files there are.
    assert "- a.png (image/png, 308 bytes)\n- b.bin (application/octet-stream, 3 bytes)" in answer, answer

    # Over A2A: a binary file part is taken (a model agent without such a tool refuses it).
    message = {
        "messageId": "m1",
        "role": "ROLE_USER",
        "parts": [
            {"text": call("measure", '{"unit": "B"}')},
            {"raw": base64.b64encode(png).decode(), "mediaType": "image/png", "filename": "c.png"},
        ],
    }
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {fleet.token}", "A2A-Version": "1.0"}
    request = urllib.request.Request(f"{fleet.address}/a2a/measurer", data=body.encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    parts = reply["result"]["task"]["artifacts"][0]["parts"]
    assert parts[0]["text"].endswith("c.png:image/png=308 B"), reply
    with urllib.request.urlopen(f"{fleet.address}/a2a/measurer/.well-known/agent-card.json", timeout=30) as response:
        assert "*/*" in json.loads(response.read())["defaultInputModes"]
