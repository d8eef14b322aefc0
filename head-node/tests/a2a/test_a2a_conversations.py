"""Conversations are the head's: a context's turns, stored with its tasks, go with each next
turn to whichever worker runs it. A five-turn conversation with SmolLM2 through A2A
`contextId` (the official SDK as the client) loses nothing when the worker that held it is
SIGKILLed, nor when the head is SIGKILLed and started again on its data."""

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest, Task, TaskState
from fleetproc import SMOLLM2, Fleet, clean_env, smollm2_gguf

CONFIG = f"""
[[agent]]
name = "chat"
model = "{SMOLLM2}"
instructions = "You are a terse assistant."
sampling = {{ max_tokens = 16, temperature = 0.0 }}
"""


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """A head keeping its state in a data folder, and two workers (w0, w1) serving SmolLM2."""
    models = tempfile.TemporaryDirectory()
    (Path(models.name) / SMOLLM2).symlink_to(smollm2_gguf())
    env = clean_env(FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")
    workers = [["--models-dir", models.name, "--name", f"w{i}"] for i in range(2)]
    f = Fleet(CONFIG, workers=workers, env=env)
    yield f
    f.stop()
    models.cleanup()


async def say(fleet: Fleet, text: str, context_id: str) -> Task:
    """One turn of the conversation: a blocking send, its completed task."""
    factory = ClientFactory(ClientConfig(streaming=False, supported_protocol_bindings=["JSONRPC"]))
    client = await factory.create_from_url(f"{fleet.url}/a2a/chat")
    try:
        message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)], context_id=context_id)
        events = [e async for e in client.send_message(SendMessageRequest(message=message))]
    finally:
        await client.close()
    task = (events[0][0] if isinstance(events[0], tuple) else events[0]).task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED and task.context_id == context_id, task
    return task


def tokens(task: Task) -> tuple[int, int]:
    """The task's prompt and completion tokens, as the worker counted them."""
    usage = task.metadata["usage"]
    return int(usage["promptTokens"]), int(usage["completionTokens"])


def worker_of(fleet: Fleet, task: Task) -> str:
    return httpx.get(f"{fleet.url}/ui/api/tasks/{task.id}").json()["worker"]


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_a_conversation_outlives_its_worker_and_the_head(fleet: Fleet) -> None:
    context = str(uuid.uuid4())
    asks = ["Name a color.", "Name a fruit.", "Name an animal.", "Name a city.", "Name a tree."]
    turns = [await say(fleet, ask, context) for ask in asks[:3]]
    # Each turn's prompt holds the one before and its answer.
    for before, after in zip(turns, turns[1:]):
        (p0, c0), (p1, _) = tokens(before), tokens(after)
        assert p1 >= p0 + c0, (tokens(before), tokens(after))

    # The worker that ran turn 3 dies; turn 4 runs on the other with turns 1-3 in its prompt.
    held_by = worker_of(fleet, turns[2])
    fleet.workers[int(held_by.removeprefix("w"))].kill()
    turns.append(await say(fleet, asks[3], context))
    assert worker_of(fleet, turns[3]) != held_by
    (p3, c3), (p4, c4) = tokens(turns[2]), tokens(turns[3])
    assert p4 >= p3 + c3, f"turn 4's prompt ({p4} tokens) lacks turns 1-3 ({p3} + {c3})"

    # The head dies and starts again on its data: turn 5 still has turns 1-4.
    fleet.workers = [w for w in fleet.workers if w.poll() is None]
    fleet.restart_head()
    turns.append(await say(fleet, asks[4], context))
    p5, _ = tokens(turns[4])
    assert p5 >= p4 + c4, f"turn 5's prompt ({p5} tokens) lacks turns 1-4 ({p4} + {c4})"

    # Another context starts from nothing.
    fresh = await say(fleet, asks[4], str(uuid.uuid4()))
    assert tokens(fresh)[0] < tokens(turns[0])[0] + 10
