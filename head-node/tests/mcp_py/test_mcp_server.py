"""The head's MCP server (/mcp, streamable HTTP) with the official MCP Python SDK as the
client: the cluster's agents listed as tools and called, text streamed as progress, errors
of each kind, credentials, and a call whose client goes away canceling its task."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import httpx2
import mcp
import pytest
from fleetproc import Fleet
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def connect(cluster: Fleet, mode: str = "auto", api_key: str | None = None) -> AsyncIterator[mcp.Client]:
    """An MCP client of the head's /mcp (`mode` "legacy": the initialize handshake of
    protocol versions before 2026-07-28; "auto": the newest both sides speak)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with mcp.Client(streamable_http_client(f"{cluster.url}/mcp", http_client=http), mode=mode, read_timeout_seconds=60) as client:
            yield client


async def eventually(condition, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    """Polls `condition()` (without blocking the event loop) until it returns something
    true; returns that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := condition()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


def a2a_task(cluster: Fleet, agent: str, task_id: str) -> dict:  # type: ignore[type-arg]
    reply = httpx.get(f"{cluster.url}/a2a/{agent}/tasks/{task_id}", headers={"A2A-Version": "1.0"})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_agents_are_listed_as_tools(cluster: Fleet, mode: str) -> None:
    async with connect(cluster, mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == ["broken", "echo", "nowhere", "slow"], "every registered agent, no hidden model agent"
    assert tools["echo"].description == "says back what it is told"
    assert tools["slow"].description == "agent slow on model builtin:echo"
    schema = tools["echo"].input_schema
    assert schema["required"] == ["input"] and set(schema["properties"]) == {"input", "context_id"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_call_runs_a_task_on_the_agent(cluster: Fleet, mode: str) -> None:
    async with connect(cluster, mode) as client:
        result = await client.call_tool("echo", {"input": "hello from mcp", "context_id": "conversation-7"})
    assert not result.is_error
    assert [c.text for c in result.content] == ["hello from mcp"]  # type: ignore[union-attr]
    task_id = (result.meta or {})["agentfleet/task_id"]
    task = a2a_task(cluster, "echo", task_id)
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert task["contextId"] == "conversation-7", "the call's context_id is the task's"


async def test_progress_notifications_carry_the_text_as_it_is_written(cluster: Fleet) -> None:
    notes: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message))

    async with connect(cluster) as client:
        result = await client.call_tool("slow", {"input": "one two three"}, progress_callback=on_progress)
    text = result.content[0].text  # type: ignore[union-attr]
    assert text == "one two three"
    assert len(notes) >= 2, notes
    assert "".join(m or "" for _, m in notes) == text
    assert [p for p, _ in notes] == sorted({p for p, _ in notes}), "progress only grows"


async def test_calls_that_cannot_start_are_protocol_errors(cluster: Fleet) -> None:
    cases: list[tuple[str, dict[str, object], int, str]] = [
        ("no-such-agent", {"input": "x"}, -32602, "unknown tool"),
        ("echo", {}, -32602, "missing `input`"),
        ("echo", {"input": 7}, -32602, "`input` must be a string"),
        ("echo", {"input": "x", "temperature": 1}, -32602, 'unknown argument "temperature"'),
        ("nowhere", {"input": "x"}, -32004, "no worker can ever run"),
    ]
    async with connect(cluster) as client:
        for name, arguments, code, words in cases:
            with pytest.raises(mcp.MCPError) as raised:
                await client.call_tool(name, arguments)
            assert raised.value.error.code == code, (name, arguments, raised.value.error)
            assert words in raised.value.error.message, raised.value.error.message
        # The server still serves.
        assert not (await client.call_tool("echo", {"input": "still here"})).is_error


async def test_a_task_that_fails_is_an_error_result_the_model_reads(cluster: Fleet) -> None:
    async with connect(cluster) as client:
        result = await client.call_tool("broken", {"input": "x"})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert text.startswith("the agent's task failed") and "token_delay_ms" in text, text


async def test_credentials_are_the_other_doors(keyed_cluster: Fleet) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    for wrong in [{}, {"Authorization": "Bearer nope"}]:
        reply = httpx.post(f"{keyed_cluster.url}/mcp", json=body, headers={**headers, **wrong})
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["code"] == -32053 and "Authorization: Bearer" in reply.json()["error"]["message"]
    async with connect(keyed_cluster, api_key="k3y") as client:
        assert not (await client.call_tool("echo", {"input": "let in"})).is_error


async def test_a_client_that_goes_away_cancels_its_task(cluster: Fleet) -> None:
    words = " ".join(f"w{i}" for i in range(300))  # 60 s at 200 ms a word
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow", "arguments": {"input": words}}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}

    def tasks() -> list[dict]:  # type: ignore[type-arg]
        reply = httpx.get(f"{cluster.url}/a2a/slow/tasks", headers={"A2A-Version": "1.0"})
        return [t for t in reply.json()["tasks"] if t["history"][0]["parts"][0]["text"] == words] if reply.status_code == 200 else []

    async with httpx.AsyncClient(timeout=60) as http:
        call = asyncio.create_task(http.post(f"{cluster.url}/mcp", json=body, headers=headers))
        running = await eventually(lambda: [t for t in tasks() if t["status"]["state"] == "TASK_STATE_WORKING"], what="the call's task working")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    task_id = running[0]["id"]
    await eventually(lambda: a2a_task(cluster, "slow", task_id)["status"]["state"] == "TASK_STATE_CANCELED", what="the task canceled")
