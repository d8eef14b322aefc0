"""Humans in the loop: an agent asks its user a question (`ask_user`), a tool call waits for
approval (`requires_approval`); the task is input-required until `task.reply(...)`,
`task.approve()` or `task.reject(...)`, embedded or through a remote head (gRPC
`ReplyToTask`), and fails when nobody answers in time."""

import pathlib
from collections.abc import Iterator

import pytest

import agentfleet as af
from conftest import smollm2_gguf


def call(name: str, arguments: str) -> str:
    """What builtin:echo is told to write: a call of `name` (it answers with the result)."""
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def kinds(task: af.Task) -> list[str]:
    return [e.kind for e in task.events() if e.kind not in ("submitted", "scheduled", "text_delta")]


@pytest.fixture(scope="module")
def fleet() -> Iterator[af.Fleet]:
    fleet = af.init(workers=1)
    yield fleet
    fleet.shutdown()


def test_an_agent_asks_its_user_and_goes_on_with_the_answer(fleet: af.Fleet) -> None:
    agent = fleet.agent("asker", model="builtin:echo", ask_user=True)
    task = agent.submit(call("ask_user", '{"question": "Which city?"}'))
    request = task.wait_input(timeout=30)
    assert request is not None and request.kind == "input_required"
    assert (request.prompt, request.tool) == ("Which city?", "")
    assert task.state == "input-required"
    assert task.input_request is not None and task.input_request.call_id == request.call_id
    # Only a waiting task takes a reply, and a question takes text, not an approval.
    with pytest.raises(af.InvalidRequestError, match="asks a question, not for an approval"):
        task.approve()
    task.reply("Paris")
    assert task.result(timeout=30) == "Paris"
    assert task.state == "completed" and task.input_request is None
    assert kinds(task) == [
        "working", "tool_call", "input_required", "input_received", "tool_result", "completed",
    ]
    with pytest.raises(af.UnsupportedError, match="an ended task takes no more input"):
        task.reply("too late")


def test_a_declined_question_reaches_the_model_as_an_error(fleet: af.Fleet) -> None:
    agent = fleet.agent("asker", model="builtin:echo", ask_user=True)
    task = agent.submit(call("ask_user", '{"question": "Your password?"}'))
    assert task.wait_input(timeout=30) is not None
    task.reject("I will not say")
    assert task.result(timeout=30) == "the user declined to answer: I will not say"


def test_a_tool_call_waits_for_approval(fleet: af.Fleet) -> None:
    deleted: list[str] = []

    @fleet.tool(requires_approval=True)
    def delete_file(path: str) -> str:
        """Deletes a file."""
        deleted.append(path)
        return f"deleted {path}"

    agent = fleet.agent("janitor", model="builtin:echo", tools=[delete_file])
    # Approved: the call runs, once.
    task = agent.submit(call("delete_file", '{"path": "/tmp/a"}'))
    request = task.wait_input(timeout=30)
    assert request is not None
    assert (request.tool, request.arguments) == ("delete_file", '{"path":"/tmp/a"}')
    assert "janitor wants to call delete_file" in request.prompt
    assert deleted == []
    task.approve()
    assert task.result(timeout=30) == "deleted /tmp/a"
    assert deleted == ["/tmp/a"]
    # Rejected: the call never runs; the model reads why.
    task = agent.submit(call("delete_file", '{"path": "/etc"}'))
    assert task.wait_input(timeout=30) is not None
    task.reject("not that one")
    assert task.result(timeout=30) == "the user did not approve this call: not that one"
    assert deleted == ["/tmp/a"]
    received = [e for e in task.events() if e.kind == "input_received"]
    assert [(e.reply, e.rejected) for e in received] == [("not that one", True)]
    # A reply in words: "yes" approves.
    task = agent.submit(call("delete_file", '{"path": "/tmp/b"}'))
    assert task.wait_input(timeout=30) is not None
    task.reply("Yes")
    assert task.result(timeout=30) == "deleted /tmp/b"


def test_an_agent_tool_listed_by_name_waits_for_approval(fleet: af.Fleet) -> None:
    fleet.agent("helper", model="builtin:echo")
    agent = fleet.agent("guarded", model="builtin:echo", tools=["helper"], requires_approval=["helper"])
    task = agent.submit(call("helper", '{"input": "hello"}'))
    request = task.wait_input(timeout=30)
    assert request is not None and request.tool == "helper"
    # Nothing ran yet: no sub-task was started for the call.
    assert "tool_call" not in kinds_so_far(task)
    task.approve()
    assert task.result(timeout=30) == "hello"


def kinds_so_far(task: af.Task) -> list[str]:
    """The kinds of the events the task has now (without waiting for more)."""
    seen = []
    for e in task.events():
        seen.append(e.kind)
        if e.kind == "input_required":
            break
    return seen


def test_nobody_answering_fails_the_task_with_the_reason(fleet: af.Fleet) -> None:
    agent = fleet.agent("impatient", model="builtin:echo", ask_user=True, input_timeout=0.5)
    task = agent.submit(call("ask_user", '{"question": "Anyone?"}'))
    with pytest.raises(af.FleetError, match="nobody replied within"):
        task.result(timeout=30)
    assert task.state == "failed"


def test_bad_settings_are_refused_with_the_reason(fleet: af.Fleet) -> None:
    with pytest.raises(af.InvalidRequestError, match="requires_approval names \"nope\""):
        fleet.agent("bad", model="builtin:echo", requires_approval=["nope"])
    with pytest.raises(af.InvalidRequestError, match="set ask_user"):
        fleet.agent("bad", model="builtin:echo", tools=["ask_user"])
    with pytest.raises(af.InvalidRequestError, match="input_timeout"):
        fleet.agent("bad", model="builtin:echo", ask_user=True, input_timeout=0)
    task = fleet.agent("plain", model="builtin:echo").submit("hi")
    assert task.result(timeout=30) == "hi"
    with pytest.raises(af.UnsupportedError):
        task.reply("hello?")


def test_a_called_agent_has_nobody_to_ask(fleet: af.Fleet) -> None:
    fleet.agent("inner", model="builtin:echo", ask_user=True)
    outer = fleet.agent("outer", model="builtin:echo", tools=["inner"])
    # The inner call as a JSON string ("</" written "<\/", so the outer call ends where it should).
    inner_input = call("ask_user", '{"question": "Which city?"}').replace('"', '\\"').replace("</", "<\\/")
    task = outer.submit(call("inner", f'{{"input": "{inner_input}"}}'))
    assert task.result(timeout=30).startswith("there is no user to ask")


def test_replies_through_a_remote_head(remote_cluster: str) -> None:
    with af.init(remote_cluster, token="s3cret") as fleet:
        agent = fleet.agent("remote-asker", model="builtin:echo", ask_user=True)
        task = agent.submit(call("ask_user", '{"question": "Which city?"}'))
        request = task.wait_input(timeout=30)
        assert request is not None and request.prompt == "Which city?"
        task.reply("Lyon")
        assert task.result(timeout=30) == "Lyon"
        with pytest.raises(af.UnsupportedError):
            task.reply("again")


def test_smollm2_asks_the_user(tmp_path: pathlib.Path) -> None:
    (tmp_path / "smollm2.gguf").symlink_to(smollm2_gguf())
    with af.init(workers=1, models_dir=tmp_path) as fleet:
        agent = fleet.agent(
            "concierge",
            model="smollm2.gguf",
            instructions="Ask the user which city they mean before you answer.",
            ask_user=True,
            tool_choice="ask_user",
            sampling=af.Sampling(temperature=0.0, max_tokens=48),
        )
        task = agent.submit("Book me a hotel.")
        request = task.wait_input(timeout=120)
        assert request is not None and request.tool == ""
        assert request.prompt.strip(), "the model asked an empty question"
        task.reply("Paris")
        # The model may ask again: answer until it is done.
        for _ in range(8):
            if task.wait_input(timeout=120) is None:
                break
            task.reply("Paris, for two nights")
        task.result(timeout=120)
        received = [e.reply for e in task.events() if e.kind == "input_received"]
        assert received[0] == "Paris"
