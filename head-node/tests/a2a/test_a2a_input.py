"""Humans in the loop over A2A: an agent's question (`ask_user`) and a tool call's approval
make the task input-required; the client's message with the task's id continues it. The
official a2a-sdk client in 1.0 and 0.3 mode and over gRPC, and raw JSON-RPC for the errors."""

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from a2a.types.a2a_pb2 import GetTaskRequest, Message, Part, Role, SendMessageRequest, Task, TaskState
from conftest import sdk_client
from fleetproc import Fleet, clean_env
from test_a2a_http import Webhook, await_final_task

MODES = ["1.0", "0.3"]
# The SDK's clients: JSON-RPC in either dialect, and the gRPC binding.
SDK_MODES = [*MODES, "grpc"]

# `builtin:echo` repeats its input; a `<tool_call>` in it is a call of that tool, and after
# the tool's result its next reply is that result (so an `ask_user` task answers the reply).
CONFIG = """
[[agent]]
name = "asker"
model = "builtin:echo"
ask_user = true

[[agent]]
name = "helper"
model = "builtin:echo"

[[agent]]
name = "guarded"
model = "builtin:echo"
tools = ["helper"]
requires_approval = ["helper"]

[[agent]]
name = "impatient"
model = "builtin:echo"
ask_user = true
input_timeout_s = 1.0

[[agent]]
name = "slow"
model = "builtin:echo"
model_options = { token_delay_ms = 40 }
"""

QUESTION = "Which city?"
ASK = '<tool_call>{"name": "ask_user", "arguments": {"question": "Which city?"}}</tool_call>'
CALL_HELPER = '<tool_call>{"name": "helper", "arguments": {"input": "hello"}}</tool_call>'
V1 = {"A2A-Version": "1.0"}
WAIT_S = 30


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    # Webhooks on 127.0.0.1 are this test's own.
    f = Fleet(CONFIG, "--allow-private-webhooks", env=clean_env(FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0"))
    yield f
    f.stop()


# --- the SDK -------------------------------------------------------------------------


async def client(fleet: Fleet, agent: str, mode: str, streaming: bool = True):  # type: ignore[no-untyped-def]
    return await sdk_client(fleet.url, agent, mode, streaming)


def request(text: str, task_id: str = "", context_id: str = "") -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    if task_id:
        message.task_id = task_id
    if context_id:
        message.context_id = context_id
    return SendMessageRequest(message=message)


def payload(event):  # type: ignore[no-untyped-def]
    """The StreamResponse of a client event (the SDK yields StreamResponse or (response, task) pairs)."""
    return event[0] if isinstance(event, tuple) else event


def text_of(message_or_artifact) -> str:  # type: ignore[no-untyped-def]
    return "".join(p.text for p in message_or_artifact.parts)


def answer_of(task: Task) -> str:
    return "".join(text_of(a) for a in task.artifacts)


class Streamed:
    """What one streaming send yielded: the task it opened with, its status updates and the
    text of its artifact chunks."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.task = Task()
        self.statuses: list = []  # TaskStatus
        self.chunks = ""

    @property
    def final_state(self) -> int:
        return self.statuses[-1].state if self.statuses else self.task.status.state


async def stream(c, req: SendMessageRequest) -> Streamed:  # type: ignore[no-untyped-def]
    """Reads a streaming send to its end (which must come: a stream ends at input-required)."""
    out = Streamed()

    async def read() -> None:
        async for event in c.send_message(req):
            response = payload(event)
            kind = response.WhichOneof("payload")
            out.kinds.append(kind)
            if kind == "task":
                out.task = response.task
            elif kind == "status_update":
                out.statuses.append(response.status_update.status)
            elif kind == "artifact_update":
                out.chunks += text_of(response.artifact_update.artifact)

    await asyncio.wait_for(read(), WAIT_S)
    return out


async def send(c, req: SendMessageRequest) -> Task:  # type: ignore[no-untyped-def]
    """A blocking non-streaming send: the task it returned."""
    events = [payload(e) async for e in c.send_message(req)]
    assert len(events) == 1 and events[0].WhichOneof("payload") == "task", events
    return events[0].task


async def poll(c, task_id: str, done, what: str) -> Task:  # type: ignore[no-untyped-def]
    """GetTask until `done(task)`, at most WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        task = await c.get_task(GetTaskRequest(id=task_id))
        if done(task):
            return task
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {task}"
        await asyncio.sleep(0.05)


def is_question(status, text: str) -> None:  # type: ignore[no-untyped-def]
    assert status.state == TaskState.TASK_STATE_INPUT_REQUIRED, status
    assert status.message.role == Role.ROLE_AGENT, status
    assert text_of(status.message) == text, status


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", SDK_MODES)
async def test_a_question_ends_the_stream_and_a_reply_streams_the_rest(fleet: Fleet, mode: str) -> None:
    c = await client(fleet, "asker", mode)
    async with c:
        first = await stream(c, request(ASK))
        assert first.kinds[0] == "task"
        task_id, context_id = first.task.id, first.task.context_id
        assert task_id and context_id
        # The stream ended (read() returned) at input-required, the question its message.
        is_question(first.statuses[-1], QUESTION)
        asked = await c.get_task(GetTaskRequest(id=task_id))
        is_question(asked.status, QUESTION)

        # The reply names the task and no context: it inherits the task's.
        second = await stream(c, request("Paris", task_id=task_id))
        assert second.kinds[0] == "task" and second.task.id == task_id
        assert second.task.context_id == context_id
        assert second.task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED, second.task.status
        assert second.final_state == TaskState.TASK_STATE_COMPLETED, second.statuses
        # The answer: what the snapshot held plus the chunks after it.
        assert answer_of(second.task) + second.chunks == "Paris"

        done = await c.get_task(GetTaskRequest(id=task_id))
        assert done.status.state == TaskState.TASK_STATE_COMPLETED and done.context_id == context_id
        assert answer_of(done) == "Paris"
        history = [(m.role, text_of(m)) for m in done.history]
        assert history == [
            (Role.ROLE_USER, ASK),
            (Role.ROLE_AGENT, QUESTION),
            (Role.ROLE_USER, "Paris"),
            (Role.ROLE_AGENT, "Paris"),
        ]
        assert len({m.message_id for m in done.history}) == 4, done.history
        last_two = await c.get_task(GetTaskRequest(id=task_id, history_length=2))
        assert [(m.role, text_of(m)) for m in last_two.history] == history[-2:]
        last_three = await c.get_task(GetTaskRequest(id=task_id, history_length=3))
        assert [text_of(m) for m in last_three.history] == [QUESTION, "Paris", "Paris"]


def approval_prompt(text: str) -> None:
    assert text.startswith("Agent guarded wants to call helper with "), text
    assert json.loads(text.split(" with ", 1)[1].split(". Reply", 1)[0]) == {"input": "hello"}, text
    assert 'Reply "approve" to let it, or anything else to refuse' in text, text


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", SDK_MODES)
async def test_a_blocking_send_returns_at_an_approval_and_approve_runs_the_tool(fleet: Fleet, mode: str) -> None:
    c = await client(fleet, "guarded", mode, streaming=False)
    async with c:
        waiting = await send(c, request(CALL_HELPER))
        assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED, waiting.status
        assert waiting.status.message.role == Role.ROLE_AGENT
        approval_prompt(text_of(waiting.status.message))

        done = await send(c, request("approve", task_id=waiting.id, context_id=waiting.context_id))
        assert done.id == waiting.id and done.context_id == waiting.context_id
        assert done.status.state == TaskState.TASK_STATE_COMPLETED, done.status
        assert answer_of(done) == "hello"  # helper's answer: the call ran
        texts = [text_of(m) for m in done.history]
        assert texts[0] == CALL_HELPER and texts[2:] == ["approve", "hello"], texts
        approval_prompt(texts[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", SDK_MODES)
async def test_a_refused_approval_reaches_the_model_as_the_reason(fleet: Fleet, mode: str) -> None:
    c = await client(fleet, "guarded", mode)
    async with c:
        first = await stream(c, request(CALL_HELPER))
        status = first.statuses[-1]
        assert status.state == TaskState.TASK_STATE_INPUT_REQUIRED, first.statuses
        approval_prompt(text_of(status.message))

        second = await stream(c, request("too risky", task_id=first.task.id))
        assert second.final_state == TaskState.TASK_STATE_COMPLETED, second.statuses
        refused = "the user did not approve this call: too risky"
        assert answer_of(second.task) + second.chunks == refused
        done = await c.get_task(GetTaskRequest(id=first.task.id))
        assert answer_of(done) == refused
        assert [text_of(m) for m in done.history][2:] == ["too risky", refused]


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", SDK_MODES)
async def test_a_question_nobody_answers_fails_the_task_after_the_input_timeout(fleet: Fleet, mode: str) -> None:
    c = await client(fleet, "impatient", mode, streaming=False)
    async with c:
        waiting = await send(c, request(ASK))
        is_question(waiting.status, QUESTION)
        failed = await poll(c, waiting.id, lambda t: t.status.state != TaskState.TASK_STATE_INPUT_REQUIRED, "the timeout")
        assert failed.status.state == TaskState.TASK_STATE_FAILED, failed.status
        assert "nobody replied within" in text_of(failed.status.message), failed.status
    # Too late: the task ended.
    late = rpc(fleet, "SendMessage", message("Paris", task_id=waiting.id), agent="impatient")
    assert error_code(late) == -32004


# --- raw JSON-RPC ----------------------------------------------------------------------


def rpc(fleet: Fleet, method: str, params: object, agent: str, headers: dict[str, str] = V1) -> dict:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    response = httpx.post(f"{fleet.url}/a2a/{agent}", json=body, headers=headers, timeout=WAIT_S)
    assert response.status_code == 200, response.text
    return response.json()


def message(text: str, task_id: str = "", context_id: str = "", mode: str = "1.0", **configuration: object) -> dict:
    if mode == "1.0":
        m: dict = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]}
    else:
        m = {"kind": "message", "messageId": str(uuid.uuid4()), "role": "user", "parts": [{"kind": "text", "text": text}]}
    if task_id:
        m["taskId"] = task_id
    if context_id:
        m["contextId"] = context_id
    return {"message": m, **({"configuration": configuration} if configuration else {})}


def error_code(reply: dict) -> int:
    assert "error" in reply, reply
    assert reply["error"]["data"][0]["domain"] == "a2a-protocol.org", reply
    return reply["error"]["code"]


class Dialect:
    """The JSON-RPC method names, header and state names of one A2A version."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.headers = V1 if mode == "1.0" else {}
        self.send, self.get = ("SendMessage", "GetTask") if mode == "1.0" else ("message/send", "tasks/get")
        self.input_required = "TASK_STATE_INPUT_REQUIRED" if mode == "1.0" else "input-required"
        self.completed = "TASK_STATE_COMPLETED" if mode == "1.0" else "completed"

    def message(self, fleet: Fleet, agent: str, text: str, task_id: str = "", context_id: str = "", **configuration: object) -> dict:
        return rpc(fleet, self.send, message(text, task_id, context_id, self.mode, **configuration), agent, self.headers)

    def task(self, reply: dict) -> dict:
        assert "result" in reply, reply
        return reply["result"]["task"] if self.mode == "1.0" else reply["result"]

    def get_task(self, fleet: Fleet, agent: str, task_id: str) -> dict:
        reply = rpc(fleet, self.get, {"id": task_id}, agent, self.headers)
        assert "result" in reply, reply
        return reply["result"]

    def at_once(self) -> dict[str, object]:
        """The configuration of a send that returns without waiting for the task."""
        return {"returnImmediately": True} if self.mode == "1.0" else {"blocking": False}

    def poll(self, fleet: Fleet, agent: str, task_id: str, state: str) -> dict:
        """GetTask until the task is in `state`, at most WAIT_S seconds."""
        deadline = time.monotonic() + WAIT_S
        while (task := self.get_task(fleet, agent, task_id))["status"]["state"] != state:
            assert time.monotonic() < deadline, f"timed out waiting for {state}: {task}"
            time.sleep(0.05)
        return task


@pytest.mark.parametrize("mode", MODES)
def test_replies_that_cannot_be_taken_are_errors_and_the_server_keeps_serving(fleet: Fleet, mode: str) -> None:
    d = Dialect(mode)
    waiting = d.task(d.message(fleet, "asker", ASK))
    assert waiting["status"]["state"] == d.input_required, waiting
    task_id, context_id = waiting["id"], waiting["contextId"]

    # Another context's message to the task: invalid params; the task still waits.
    other = str(uuid.uuid4())
    assert error_code(d.message(fleet, "asker", "Paris", task_id, other)) == -32602
    # A task of another agent is not this agent's to answer.
    assert error_code(d.message(fleet, "helper", "Paris", task_id)) == -32001
    # An unknown task.
    assert error_code(d.message(fleet, "asker", "Paris", str(uuid.uuid4()))) == -32001
    still = d.get_task(fleet, "asker", task_id)
    assert still["status"]["state"] == d.input_required, still
    assert still["status"]["message"]["parts"][0]["text"] == QUESTION, still

    # The right context: the reply is taken (not waiting for the end, which a blocking send's
    # test covers elsewhere).
    taken = d.task(d.message(fleet, "asker", "Oslo", task_id, context_id, **d.at_once()))
    assert taken["id"] == task_id and taken["status"]["state"] != d.input_required, taken
    done = d.poll(fleet, "asker", task_id, d.completed)
    assert done["artifacts"][0]["parts"][0]["text"] == "Oslo"
    # A completed task takes no more input.
    assert error_code(d.message(fleet, "asker", "Bergen", task_id)) == -32004
    assert error_code(d.message(fleet, "asker", "Bergen", task_id, context_id)) == -32004

    # A task that works (not input-required) has nothing to reply to.
    working = d.task(d.message(fleet, "slow", " ".join(f"w{i}" for i in range(200)), **d.at_once()))
    assert error_code(d.message(fleet, "slow", "hello?", working["id"])) == -32602
    cancel = "CancelTask" if mode == "1.0" else "tasks/cancel"
    rpc(fleet, cancel, {"id": working["id"]}, "slow", d.headers)

    # Still serving, the task's context included.
    again = d.task(d.message(fleet, "asker", "still here", context_id=context_id))
    assert again["status"]["state"] == d.completed and again["contextId"] == context_id, again
    assert again["artifacts"][0]["parts"][0]["text"] == "still here"


def test_push_notifications_go_on_through_a_question_to_the_end(fleet: Fleet) -> None:
    """The webhook hears the question (as the status message) and, after a reply that did
    not come on an A2A stream, the rest of the task to its end."""
    hook = Webhook(failures=0)
    try:
        push = {"url": hook.url, "token": "tok"}
        params = message(ASK, returnImmediately=True, taskPushNotificationConfig=push)
        task = rpc(fleet, "SendMessage", params, agent="asker")["result"]["task"]
        deadline = time.monotonic() + WAIT_S
        while not any(b.get("statusUpdate", {}).get("status", {}).get("state") == "TASK_STATE_INPUT_REQUIRED" for _, b in hook.received):
            assert time.monotonic() < deadline, hook.received
            time.sleep(0.02)
        asked = next(b for _, b in hook.received if b.get("statusUpdate", {}).get("status", {}).get("state") == "TASK_STATE_INPUT_REQUIRED")
        assert asked["statusUpdate"]["status"]["message"]["parts"][0]["text"] == QUESTION
        reply = rpc(fleet, "SendMessage", message("Oslo", task_id=task["id"], returnImmediately=True), agent="asker")
        assert "result" in reply, reply
        final = await_final_task(hook)
        assert final["id"] == task["id"] and final["status"]["state"] == "TASK_STATE_COMPLETED"
        assert final["artifacts"][0]["parts"][0]["text"] == "Oslo"
    finally:
        hook.close()
