"""Artifacts: files and JSON data a Python agent returns beside its text (`ctx.artifact`),
as Python clients (`task.artifacts()`, `artifact` events) and A2A clients (task artifacts
and streamed artifact updates, 1.0 and 0.3) get them; and their limits."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import agentfleet as af

#: A file with every byte value in it (binary survives every hop).
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64


@af.agent
async def Reporter(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    """Writes a report: text around a chart, a table as data, notes and a link."""
    yield "here is the report. "
    ctx.artifact(PNG, name="chart.png", media_type="image/png", description="sales by month")
    ctx.artifact({"rows": [[1, "a"], [2, "b"]], "total": 3.5}, name="table")
    yield "and the notes."
    ctx.artifact("first line\nsecond é\n", name="notes.txt")
    ctx.artifact(af.AgentFile(name="raw.csv", media_type="text/csv", url="https://example.com/raw.csv"))


@af.agent
async def Limits(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    """Tries what is refused; answers with what each refusal said."""
    try:
        ctx.artifact(b"x" * (8 << 20))
    except af.InvalidRequestError as e:
        yield f"big: {e}\n"
    try:
        ctx.artifact({1, 2})
    except TypeError as e:
        yield f"set: {type(e).__name__}\n"
    try:
        ctx.artifact(float("nan"))
    except ValueError as e:
        yield f"nan: {type(e).__name__}\n"


@af.agent
async def Flood(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    """Returns more than a task may stream in all (16 MiB): the task fails."""
    for _ in range(3):
        ctx.artifact(b"y" * (6 << 20))
    yield "not reached"


@pytest.fixture(scope="module")
def fleet() -> Iterator[af.Fleet]:
    with af.init(workers=1) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def agents(fleet: af.Fleet) -> dict[str, af.Agent]:
    return {code.__name__: fleet.agent(code) for code in (Reporter, Limits, Flood)}


def check_report(artifacts: list[af.Artifact]) -> None:
    assert [a.id for a in artifacts] == ["artifact-1", "artifact-2", "artifact-3", "artifact-4"]
    chart, table, notes, link = artifacts
    assert chart.name == "chart.png" and chart.description == "sales by month"
    assert chart.file is not None and chart.file.data == PNG and chart.file.media_type == "image/png"
    assert table.file is None and table.data == {"rows": [[1, "a"], [2, "b"]], "total": 3.5}
    assert notes.file is not None and notes.file.data.decode() == "first line\nsecond é\n"
    assert notes.file.media_type == "text/plain; charset=utf-8"
    assert link.file is not None and link.file.url == "https://example.com/raw.csv" and link.file.data == b""
    assert link.name == "raw.csv" and link.file.media_type == "text/csv"


def test_a_python_client_gets_the_text_and_the_artifacts_in_order(agents: dict[str, af.Agent]) -> None:
    task = agents["Reporter"].submit("report")
    assert task.result(timeout=60) == "here is the report. and the notes."
    check_report(task.artifacts())
    # In the log, each artifact sits where the code returned it, between the texts.
    kinds = [e.kind for e in task.events() if e.kind in ("text_delta", "artifact")]
    assert kinds == ["text_delta", "artifact", "artifact", "text_delta", "artifact", "artifact"], kinds
    event = next(e for e in task.events() if e.kind == "artifact")
    assert event.name == "chart.png" and event.artifact is not None and event.artifact.file is not None
    # An event of another kind has no artifact field at all (it used to read None).
    with pytest.raises(AttributeError):
        next(e for e in task.events() if e.kind == "text_delta").artifact  # noqa: B018


def test_refused_artifacts_raise_in_the_agent_and_the_task_goes_on(agents: dict[str, af.Agent]) -> None:
    answer = agents["Limits"].submit("x").result(timeout=60)
    lines = answer.splitlines()
    assert lines[0].startswith("big: an artifact holds at most 8 MiB") and "URL" in lines[0], lines
    assert lines[1:] == ["set: TypeError", "nan: ValueError"], lines


def test_a_task_that_returns_too_much_fails_saying_so(agents: dict[str, af.Agent]) -> None:
    with pytest.raises(af.FleetError, match="more than 16 MiB"):
        agents["Flood"].submit("x").result(timeout=60)


def rpc(fleet: af.Fleet, method: str, params: dict[str, Any], version: str) -> urllib.request.Request:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {fleet.token}"}
    if version == "1.0":
        headers["A2A-Version"] = "1.0"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return urllib.request.Request(f"{fleet.address}/a2a/Reporter", data=body.encode(), headers=headers)


def message(version: str) -> dict[str, Any]:
    if version == "1.0":
        return {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "report"}]}
    return {"messageId": "m1", "role": "user", "kind": "message", "parts": [{"kind": "text", "text": "report"}]}


def a2a_artifacts(artifacts: list[dict[str, Any]], version: str) -> None:
    """The A2A shape of Reporter's artifacts, after the text's own (`output`)."""
    ids = [a["artifactId"] for a in artifacts]
    assert ids == ["output", "artifact-1", "artifact-2", "artifact-3", "artifact-4"], ids
    by_id = {a["artifactId"]: a for a in artifacts}
    chart, table, notes, link = (by_id[f"artifact-{n}"] for n in range(1, 5))
    assert chart["name"] == "chart.png" and chart["description"] == "sales by month"
    assert table["name"] == "table" and "description" not in table
    (chart_part,), (table_part,), (notes_part,), (link_part,) = (
        chart["parts"], table["parts"], notes["parts"], link["parts"]
    )
    if version == "1.0":
        assert base64.b64decode(chart_part["raw"]) == PNG
        assert chart_part["mediaType"] == "image/png" and chart_part["filename"] == "chart.png"
        assert table_part == {"data": {"rows": [[1, "a"], [2, "b"]], "total": 3.5}, "mediaType": "application/json"}
        assert base64.b64decode(notes_part["raw"]).decode() == "first line\nsecond é\n"
        assert link_part["url"] == "https://example.com/raw.csv" and "raw" not in link_part
    else:
        assert chart_part["kind"] == "file" and base64.b64decode(chart_part["file"]["bytes"]) == PNG
        assert chart_part["file"]["mimeType"] == "image/png" and chart_part["file"]["name"] == "chart.png"
        assert table_part == {"kind": "data", "data": {"rows": [[1, "a"], [2, "b"]], "total": 3.5}}
        assert link_part["file"]["uri"] == "https://example.com/raw.csv" and "bytes" not in link_part["file"]


@pytest.mark.parametrize("version", ["1.0", "0.3"])
def test_a2a_tasks_list_the_artifacts_after_the_text(fleet: af.Fleet, agents: dict[str, af.Agent], version: str) -> None:
    method = "SendMessage" if version == "1.0" else "message/send"
    params = {"message": message(version), "configuration": {"blocking": True}}
    with urllib.request.urlopen(rpc(fleet, method, params, version), timeout=60) as response:
        reply = json.loads(response.read())
    task = reply["result"].get("task", reply["result"])
    assert task["artifacts"][0]["parts"][0]["text"] == "here is the report. and the notes."
    a2a_artifacts(task["artifacts"], version)
    # GetTask shows the same.
    get = "GetTask" if version == "1.0" else "tasks/get"
    with urllib.request.urlopen(rpc(fleet, get, {"id": task["id"]}, version), timeout=30) as response:
        again = json.loads(response.read())["result"]
    a2a_artifacts(again["artifacts"], version)


@pytest.mark.parametrize("version", ["1.0", "0.3"])
def test_a2a_streams_each_artifact_as_an_update_of_its_own(
    fleet: af.Fleet, agents: dict[str, af.Agent], version: str
) -> None:
    method = "SendStreamingMessage" if version == "1.0" else "message/stream"
    request = rpc(fleet, method, {"message": message(version)}, version)
    items = []
    with urllib.request.urlopen(request, timeout=60) as response:
        for line in response:
            if line.startswith(b"data:"):
                items.append(json.loads(line[5:])["result"])
    updates = [i.get("artifactUpdate", i) for i in items if "artifactUpdate" in i or i.get("kind") == "artifact-update"]
    returned = [u["artifact"] for u in updates if u["artifact"]["artifactId"] != "output"]
    for u in updates:
        if u["artifact"]["artifactId"] != "output":
            assert u["append"] is False and u["lastChunk"] is True, u
    text = "".join(p.get("text", "") for u in updates if u["artifact"]["artifactId"] == "output" for p in u["artifact"]["parts"])
    assert text == "here is the report. and the notes."
    a2a_artifacts([{"artifactId": "output"}, *returned], version)


def test_an_mcp_client_gets_the_artifacts_as_content(fleet: af.Fleet, agents: dict[str, af.Agent]) -> None:
    """/mcp answers a call of Reporter with its text, then its image as image content, its
    data as JSON text, its other file as an embedded resource and its link as a resource
    link."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "Reporter", "arguments": {"input": "report"}}}
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
        "Authorization": f"Bearer {fleet.token}",
    }
    request = urllib.request.Request(f"{fleet.address}/mcp", data=json.dumps(call).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode()
    replies = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]
    replies = replies or [json.loads(body)]
    result = next(r["result"] for r in replies if "result" in r)
    assert result.get("isError") is not True, result
    text, image, table, notes, link = result["content"]
    assert text == {"type": "text", "text": "here is the report. and the notes."}
    assert image["type"] == "image" and image["mimeType"] == "image/png" and base64.b64decode(image["data"]) == PNG
    assert table["type"] == "text" and json.loads(table["text"]) == {"rows": [[1, "a"], [2, "b"]], "total": 3.5}
    assert notes["type"] == "resource" and notes["resource"]["mimeType"] == "text/plain; charset=utf-8"
    assert base64.b64decode(notes["resource"]["blob"]).decode() == "first line\nsecond é\n"
    assert notes["resource"]["uri"].endswith("/artifacts/artifact-3"), notes
    assert link["type"] == "resource_link" and link["uri"] == "https://example.com/raw.csv" and link["name"] == "raw.csv"


@af.agent
async def Shrinker(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    """Returns each file it is given reversed, as an artifact of the same name and type."""
    for f in task.files:
        ctx.artifact(f.data[::-1], name=f.name, media_type=f.media_type)
    yield f"{len(task.files)} files"


def test_a_python_client_gives_files_and_gets_files_back(fleet: af.Fleet, tmp_path: Any) -> None:
    """`submit(files=[...])` with an AgentFile and a path (read, named and typed by its
    extension); the agent's artifacts come back as files; a model agent takes no files."""
    shrinker = fleet.agent(Shrinker)
    path = tmp_path / "notes.json"
    path.write_bytes(b'{"a": 1}')
    task = shrinker.submit("x", files=[af.AgentFile("chart.png", "image/png", PNG), path])
    assert task.result(timeout=60) == "2 files"
    back = [(a.name, a.file.media_type, a.file.data) for a in task.artifacts() if a.file is not None]
    assert back == [("chart.png", "image/png", PNG[::-1]), ("notes.json", "application/json", b'}1 :"a"{')]
    with pytest.raises(TypeError, match="AgentFile or a path"):
        shrinker.submit("x", files=[42])  # type: ignore[list-item]
    echo = fleet.agent("echo-files", model="builtin:echo")
    with pytest.raises(af.InvalidRequestError, match="runs a model"):
        echo.submit("x", files=[path])


@af.agent
async def Painter(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    """Asks which color, then paints."""
    color = await ctx.ask("Which color?")
    yield f"painted {color}"


def test_a_python_agent_asks_its_user_and_goes_on_with_the_reply(fleet: af.Fleet) -> None:
    painter = fleet.agent(Painter, ask_user=True)
    task = painter.submit("paint")
    request = task.wait_input(timeout=30)
    assert request is not None and request.prompt == "Which color?" and task.state == "input-required"
    task.reply("blue")
    assert task.result(timeout=30) == "painted blue"
    kinds = [e.kind for e in task.events()]
    assert kinds.index("tool_call") < kinds.index("input_required") < kinds.index("input_received") < kinds.index("tool_result")
    # Declined: ctx.ask raises, and the exception fails the task.
    declined = painter.submit("paint")
    assert declined.wait_input(timeout=30) is not None
    declined.reject("no colors today")
    with pytest.raises(af.FleetError, match="declined to answer: no colors today"):
        declined.result(timeout=30)
    # An agent registered without ask_user has nobody to ask.
    mute = fleet.agent("mute-painter", model="python:Painter")
    with pytest.raises(af.FleetError, match="does not ask its user"):
        mute.submit("paint").result(timeout=30)
