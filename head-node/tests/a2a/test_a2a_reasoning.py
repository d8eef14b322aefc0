"""A thinking model's reasoning through the official A2A SDK (a2a-sdk 1.3.0), in 1.0 and 0.3
mode: streamed as its own artifact (`reasoning`) before the answer's, and kept apart in the
task. The model is a tiny Qwen3 planted to answer `<think>plan</think>42` (the Rust fixture
`write_thinking_model`, which `cargo test` builds as an example), served by a real worker."""

from collections.abc import Iterator

import pytest
from a2a.types.a2a_pb2 import GetTaskRequest, TaskState
from fleetproc import ThinkingFleet
from test_a2a_sdk import MODES, artifact_text, client, payload, request

REASONING, ANSWER = "plan", "42"
CONFIG = """
[[agent]]
name = "thinker"
model = "thinker"
sampling = { max_tokens = 16 }
"""


class ThinkingCluster(ThinkingFleet):
    """A head with the `thinker` agent on the planted model."""

    def __init__(self) -> None:
        super().__init__(CONFIG, REASONING, ANSWER)


@pytest.fixture(scope="module")
def thinking() -> Iterator[ThinkingCluster]:
    c = ThinkingCluster()
    yield c
    c.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_reasoning_streams_as_its_own_artifact_before_the_answer(thinking: ThinkingCluster, mode: str) -> None:
    c = await client(thinking, "thinker", mode)  # type: ignore[arg-type]
    async with c:
        by_artifact: dict[str, str] = {}
        order: list[str] = []
        task_id, states = "", []
        async for event in c.send_message(request("What is six times seven?")):
            response = payload(event)
            kind = response.WhichOneof("payload")
            if kind == "task":
                task_id = response.task.id
            elif kind == "artifact_update":
                update = response.artifact_update
                artifact = update.artifact.artifact_id
                by_artifact[artifact] = by_artifact.get(artifact, "") + artifact_text(update)
                if not order or order[-1] != artifact:
                    order.append(artifact)
            elif kind == "status_update":
                states.append(response.status_update.status.state)
        assert states[-1] == TaskState.TASK_STATE_COMPLETED
        assert by_artifact.pop("reasoning") == REASONING
        [(answer_id, answer)] = by_artifact.items()
        assert answer == ANSWER and order == ["reasoning", answer_id], order
        task = await c.get_task(GetTaskRequest(id=task_id))
        texts = {a.artifact_id: "".join(p.text for p in a.parts) for a in task.artifacts}
        assert texts == {"reasoning": REASONING, answer_id: ANSWER}, texts
