"""A2A message parts beyond text, through an embedded cluster's A2A endpoint: data parts in
and out, file parts (bytes or URL, 1.0 and 0.3 shapes) to a Python agent, text files into a
model agent's prompt, and what is refused (a binary file for a model, a file over the
head's input limit)."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import agentfleet as af

#: The embedded head's default --max-input-bytes.
MAX_INPUT_BYTES = 1 << 20


@af.agent
async def Inspector(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    """Describes the files it was given, one line each."""
    yield f"input={task.input!r}\n"
    for f in task.files:
        digest = hashlib.sha256(f.data).hexdigest()[:16]
        yield f"{f.name}|{f.media_type}|{len(f.data)}|{digest}|{f.url}\n"


@af.agent
async def Totals(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Sums the numbers of a data part, answering JSON."""
    numbers = json.loads(task.input)["numbers"]
    return json.dumps({"sum": sum(numbers), "count": len(numbers)})


@pytest.fixture(scope="module")
def fleet() -> Iterator[af.Fleet]:
    with af.init(workers=1) as fleet:
        fleet.agent(Inspector)
        fleet.agent(
            Totals,
            output_schema={
                "type": "object",
                "properties": {"sum": {"type": "number"}, "count": {"type": "integer"}},
                "required": ["sum", "count"],
            },
        )
        fleet.agent("echo", model="builtin:echo")
        yield fleet


def send(fleet: af.Fleet, agent: str, parts: list[dict[str, Any]], version: str = "1.0") -> dict[str, Any]:
    """SendMessage (1.0) or message/send (0.3) with `parts`; the JSON-RPC reply."""
    message: dict[str, Any] = {"messageId": "m1", "parts": parts}
    if version == "1.0":
        method, headers = "SendMessage", {"A2A-Version": "1.0"}
        message["role"] = "ROLE_USER"
    else:
        method, headers = "message/send", {}
        message.update(role="user", kind="message")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message}})
    request = urllib.request.Request(
        f"{fleet.address}/a2a/{agent}",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {fleet.token}", **headers},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply: dict[str, Any] = json.loads(response.read())
    return reply


def answer_parts(reply: dict[str, Any]) -> list[dict[str, Any]]:
    assert "result" in reply, reply
    task = reply["result"].get("task", reply["result"])
    state = task["status"]["state"]
    assert state in ("TASK_STATE_COMPLETED", "completed"), task
    return [part for artifact in task.get("artifacts", []) for part in artifact["parts"]]


def answer_text(reply: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in answer_parts(reply))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_data_part_goes_in_as_json_and_comes_back_as_data(fleet: af.Fleet) -> None:
    """A data part reaches the agent as JSON; under an output schema its answer is a data
    part again, in both dialects."""
    for version in ("1.0", "0.3"):
        part: dict[str, Any] = {"data": {"numbers": [1, 2, 3.5]}}
        if version == "0.3":
            part["kind"] = "data"
        parts = answer_parts(send(fleet, "Totals", [part], version))
        assert [p["data"] for p in parts if "data" in p] == [{"sum": 6.5, "count": 3}], parts


def test_file_parts_reach_a_python_agent_as_they_were_sent(fleet: af.Fleet) -> None:
    """Bytes (1.0 `raw`, 0.3 `file.bytes`) arrive whole with their name and media type; a URL
    arrives as a URL; text parts beside them are the input."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    digest = hashlib.sha256(png).hexdigest()[:16]
    v1 = [
        {"text": "look at these"},
        {"raw": b64(png), "mediaType": "image/png", "filename": "chart.png"},
        {"url": "https://example.com/report.pdf", "mediaType": "application/pdf", "filename": "report.pdf"},
    ]
    assert answer_text(send(fleet, "Inspector", v1)) == (
        "input='look at these'\n"
        f"chart.png|image/png|{len(png)}|{digest}|\n"
        f"report.pdf|application/pdf|0|{hashlib.sha256(b'').hexdigest()[:16]}|https://example.com/report.pdf\n"
    )
    v03 = [{"kind": "file", "file": {"bytes": b64(png), "mimeType": "image/png", "name": "chart.png"}}]
    assert answer_text(send(fleet, "Inspector", v03, "0.3")) == (
        f"input=''\nchart.png|image/png|{len(png)}|{digest}|\n"
    )


def test_a_text_file_goes_into_a_model_agents_prompt(fleet: af.Fleet) -> None:
    """A model reads text: a text file's content follows the message's text in its input
    (builtin:echo repeats its input)."""
    parts = [
        {"text": "Summarize:"},
        {"raw": b64("line one\nligne deux é\n".encode()), "mediaType": "text/plain; charset=utf-8", "filename": "notes.txt"},
    ]
    assert answer_text(send(fleet, "echo", parts)) == (
        "Summarize:\n\nFile notes.txt (text/plain; charset=utf-8):\nline one\nligne deux é\n"
    )


def test_what_an_agent_cannot_take_is_refused_with_the_protocols_error(fleet: af.Fleet) -> None:
    """A binary file or a URL for a model agent: ContentTypeNotSupported (-32005), saying
    what to send instead. A file over the head's input limit: invalid params (-32602), for
    any agent. Bytes that are not base64: invalid params."""
    image = [{"raw": b64(b"\x89PNG\r\n"), "mediaType": "image/png", "filename": "a.png"}]
    refused = send(fleet, "echo", image)["error"]
    assert refused["code"] == -32005 and "a.png (image/png) is not text" in refused["message"], refused
    assert "Python agent" in refused["message"]
    linked = [{"url": "https://example.com/a.txt", "mediaType": "text/plain"}]
    assert send(fleet, "echo", linked)["error"]["code"] == -32005

    within = [{"raw": b64(b"x" * (MAX_INPUT_BYTES - 4096)), "mediaType": "application/octet-stream", "filename": "big.bin"}]
    assert f"big.bin|application/octet-stream|{MAX_INPUT_BYTES - 4096}|" in answer_text(send(fleet, "Inspector", within))
    over = [{"raw": b64(b"x" * (MAX_INPUT_BYTES + 1)), "mediaType": "application/octet-stream", "filename": "big.bin"}]
    error = send(fleet, "Inspector", over)["error"]
    assert error["code"] == -32602 and "over the limit" in error["message"], error

    garbled = [{"raw": "not base64!", "mediaType": "image/png"}]
    assert send(fleet, "Inspector", garbled)["error"]["code"] == -32602
