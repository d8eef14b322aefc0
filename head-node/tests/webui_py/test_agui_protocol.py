"""The AG-UI door read with the `ag-ui-protocol` package: requests built as its
`RunAgentInput`, every event validated as its `Event` union with no field the model does
not know; and the refusals before a run starts (HTTP errors naming the field), which the
server survives."""

import json
import uuid
from typing import Any

import httpx
import pytest
from ag_ui.core import Event, RunAgentInput, Tool, UserMessage
from conftest import Cluster
from pydantic import BaseModel, TypeAdapter

EVENTS: TypeAdapter[Any] = TypeAdapter(Event)
ASK = '<tool_call>{"name": "ask_user", "arguments": {"question": "Which city?"}}</tool_call>'


def run_input(text: str, **extra: Any) -> dict[str, Any]:
    body = RunAgentInput(
        thread_id=str(uuid.uuid4()),
        run_id=str(uuid.uuid4()),
        state={},
        messages=[UserMessage(id="u1", role="user", content=text)],
        tools=extra.pop("tools", []),
        context=[],
        forwarded_props={},
    ).model_dump(by_alias=True, exclude_none=True)
    body.update(extra)
    return body


def known_fields(model: BaseModel, raw: dict[str, Any]) -> None:
    """Every key of `raw` is a field of `model` (the package's models accept extras)."""
    aliases = {f.alias or name for name, f in type(model).model_fields.items()}
    unknown = set(raw) - aliases
    assert not unknown, f"{raw['type']}: fields AG-UI does not define: {unknown}"


def events(cluster: Cluster, agent: str, body: dict[str, Any]) -> list[Any]:
    """POSTs `body` and reads the SSE stream to its end, each event validated."""
    out = []
    with httpx.stream("POST", f"{cluster.url}/agui/{agent}", json=body, headers={"Accept": "text/event-stream"}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                raw = json.loads(line.removeprefix("data:").strip())
                event = EVENTS.validate_python(raw)
                known_fields(event, raw)
                out.append(event)
    return out


def test_every_event_is_a_valid_ag_ui_event(cluster: Cluster) -> None:
    body = run_input("hello world")
    got = events(cluster, "echo", body)
    assert [e.type.value for e in got] == ["RUN_STARTED", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "RUN_FINISHED"]
    started, finished = got[0], got[-1]
    assert (started.thread_id, started.run_id) == (body["threadId"], body["runId"])
    assert started.protocol_version == "1.0"
    assert (finished.thread_id, finished.run_id) == (body["threadId"], body["runId"])
    assert "".join(e.delta for e in got if e.type.value == "TEXT_MESSAGE_CONTENT") == "hello world"
    assert len({e.message_id for e in got[1:5]}) == 1


def test_tool_calls_and_interrupts_validate(cluster: Cluster) -> None:
    tool = Tool(name="weather", description="The weather.", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    call = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    got = events(cluster, "echo", run_input(call, tools=[tool.model_dump(by_alias=True, exclude_none=True)]))
    assert got[-1].outcome.pending_tool_call_ids == [got[1].tool_call_id]
    asked = events(cluster, "asker", run_input(ASK))
    [interrupt] = asked[-1].outcome.interrupts
    assert interrupt.reason == "question" and interrupt.message == "Which city?"
    # Resumed: the rest of the same task, the answer included.
    resumed = events(cluster, "asker", run_input("", messages=[], resume=[{"interruptId": interrupt.id, "status": "resolved", "payload": "Oslo"}]))
    assert "".join(e.delta for e in resumed if e.type.value == "TEXT_MESSAGE_CONTENT") == "Oslo"
    # An interrupt answered once is answered: a second resume is refused, saying why.
    again = httpx.post(f"{cluster.url}/agui/asker", json=run_input("", messages=[], resume=[{"interruptId": interrupt.id, "status": "resolved", "payload": "Oslo"}]))
    assert again.status_code == 400, again.text
    assert "ended task" in again.json()["error"]["message"] or "not input-required" in again.json()["error"]["message"], again.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"threadId": ""}, "threadId"),
        ({"messages": []}, "messages"),
        ({"messages": [{"id": "1", "role": "user", "content": [{"type": "image", "source": {"type": "url", "value": "x"}}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"id": "1", "role": "narrator", "content": "x"}]}, "messages[0].role"),
        ({"tools": [{"name": "bad name", "description": ""}]}, "tools[0].name"),
        ({"tools": [{"name": "a", "description": "", "parameters": "{}"}]}, "tools[0].parameters"),
        ({"resume": [{"interruptId": "no-such-task@3", "status": "resolved", "payload": "x"}]}, None),
        ({"resume": [{"interruptId": "garbage", "status": "resolved", "payload": "x"}]}, "resume[0].interruptId"),
        ({"resume": [{"interruptId": "t@1", "status": "maybe"}]}, "resume[0].status"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(cluster: Cluster, change: dict[str, Any], field: "str | None") -> None:
    r = httpx.post(f"{cluster.url}/agui/echo", json={**run_input("hi"), **change})
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    if field is None:
        assert r.status_code == 404 and "no-such-task" in error["message"], r.text
    else:
        assert r.status_code == 400 and error["param"] == field, r.text
    # The door keeps serving.
    assert [e.type.value for e in events(cluster, "echo", run_input("still here"))][-1] == "RUN_FINISHED"


def test_http_refusals(cluster: Cluster) -> None:
    unknown = httpx.post(f"{cluster.url}/agui/nobody", json=run_input("hi"))
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]["message"], unknown.text
    assert httpx.get(f"{cluster.url}/agui/echo").status_code == 405
    not_json = httpx.post(f"{cluster.url}/agui/echo", content=b"hi", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 415, not_json.text
    # A resume at another agent's URL names the right one.
    asked = events(cluster, "asker", run_input(ASK))
    interrupt_id = asked[-1].outcome.interrupts[0].id
    wrong = httpx.post(f"{cluster.url}/agui/echo", json=run_input("", messages=[], resume=[{"interruptId": interrupt_id, "status": "cancelled"}]))
    assert wrong.status_code == 400 and "/agui/asker" in wrong.json()["error"]["message"], wrong.text


def test_a_keyed_head_wants_the_key(keyed: Cluster) -> None:
    refused = httpx.post(f"{keyed.url}/agui/echo", json=run_input("hi"))
    assert refused.status_code == 401, refused.text
    seen = keyed.node("text", "echo", "with a key", "k3y")
    assert seen["first"]["text"] == "with a key"
