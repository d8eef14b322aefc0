"""The official A2A Python SDK (a2a-sdk 1.3.0) as the client, in 1.0 and 0.3 mode."""

import uuid

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from conftest import Cluster, grpc_channel, sdk_client

# The JSON-RPC binding in either dialect, and A2A 1.0's gRPC binding: the same scenarios.
MODES = ["1.0", "0.3", "grpc"]


def card_url(cluster: Cluster, agent: str, mode: str) -> str:
    suffix = "" if mode == "1.0" else "/v0.3"
    return f"{cluster.url}/a2a/{agent}{suffix}"


async def client(cluster: Cluster, agent: str, mode: str, streaming: bool = True):  # type: ignore[no-untyped-def]
    return await sdk_client(cluster.url, agent, mode, streaming)


def request(text: str, context_id: str = "") -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    if context_id:
        message.context_id = context_id
    return SendMessageRequest(message=message)


def payload(event):  # type: ignore[no-untyped-def]
    """The StreamResponse of a client event (the SDK yields StreamResponse or (response, task) pairs)."""
    return event[0] if isinstance(event, tuple) else event


def artifact_text(chunk) -> str:  # type: ignore[no-untyped-def]
    return "".join(p.text for p in chunk.artifact.parts)


def test_cards_describe_every_agent(cluster: Cluster) -> None:
    card = httpx.get(cluster.url + "/.well-known/agent-card.json").json()
    assert {s["id"] for s in card["skills"]} == {"echo", "slow"}
    agent = httpx.get(cluster.url + "/a2a/echo/.well-known/agent-card.json").json()
    bindings = {i["protocolBinding"] for i in agent["supportedInterfaces"]}
    assert bindings == {"JSONRPC", "HTTP+JSON", "GRPC"} and agent["capabilities"]["streaming"] is True
    grpc = next(i for i in agent["supportedInterfaces"] if i["protocolBinding"] == "GRPC")
    assert grpc == {"url": cluster.url, "protocolBinding": "GRPC", "tenant": "echo", "protocolVersion": "1.0"}
    assert agent["skills"][0]["description"] == "repeats what you say"
    assert agent["url"].endswith("/a2a/echo") and agent["protocolVersion"].startswith("0.3")
    assert httpx.get(cluster.url + "/a2a/nobody/.well-known/agent-card.json").status_code == 404


def test_a_1_0_reader_gets_a_card_the_1_0_schema_accepts(cluster: Cluster) -> None:
    from a2a.types.a2a_pb2 import AgentCard
    from google.protobuf import json_format

    for path in ("/a2a/echo/.well-known/agent-card.json", "/.well-known/agent-card.json"):
        v1 = httpx.get(cluster.url + path, headers={"A2A-Version": "1.0"})
        assert "A2A-Version" in v1.headers["vary"]
        json_format.ParseDict(v1.json(), AgentCard())  # strict: unknown fields raise
        # A reader without the header is 0.3 (the spec says so) and gets the 0.3 fields,
        # which the 1.0 schema refuses.
        v03 = httpx.get(cluster.url + path).json()
        assert v03["protocolVersion"].startswith("0.3") and v03["url"].startswith(cluster.url)
        with pytest.raises(json_format.ParseError):
            json_format.ParseDict(v03, AgentCard())


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_streaming_message_yields_task_chunks_and_completion(cluster: Cluster, mode: str) -> None:
    text = "stream these words back to me please"
    c = await client(cluster, "echo", mode)
    async with c:
        kinds, chunks, states = [], [], []
        async for event in c.send_message(request(text)):
            response = payload(event)
            kind = response.WhichOneof("payload")
            kinds.append(kind)
            if kind == "artifact_update":
                chunks.append(artifact_text(response.artifact_update))
            elif kind == "status_update":
                states.append(response.status_update.status.state)
    assert kinds[0] == "task"
    assert "".join(chunks) == text
    assert states[-1] == TaskState.TASK_STATE_COMPLETED


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_non_streaming_send_then_get_task(cluster: Cluster, mode: str) -> None:
    c = await client(cluster, "echo", mode, streaming=False)
    async with c:
        events = [payload(e) async for e in c.send_message(request("not streamed"))]
        task = events[-1].task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert "".join(p.text for p in task.artifacts[0].parts) == "not streamed"
        fetched = await c.get_task(GetTaskRequest(id=task.id, history_length=1))
        assert fetched.id == task.id and fetched.status.state == TaskState.TASK_STATE_COMPLETED
        assert len(fetched.history) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_cancel_of_a_slow_task(cluster: Cluster, mode: str) -> None:
    c = await client(cluster, "slow", mode)
    async with c:
        stream = c.send_message(request(" ".join(f"w{i}" for i in range(200))))
        task_id = ""
        async for event in stream:
            response = payload(event)
            if response.WhichOneof("payload") == "task":
                task_id = response.task.id
            if response.WhichOneof("payload") == "artifact_update":
                break
        await stream.aclose()
        canceled = await c.cancel_task(CancelTaskRequest(id=task_id))
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_resubscribe_after_a_disconnect_loses_and_repeats_nothing(cluster: Cluster, mode: str) -> None:
    text = " ".join(f"w{i}" for i in range(40))
    c = await client(cluster, "slow", mode)
    async with c:
        stream = c.send_message(request(text))
        task_id, received = "", ""
        async for event in stream:
            response = payload(event)
            kind = response.WhichOneof("payload")
            if kind == "task":
                task_id = response.task.id
            elif kind == "artifact_update":
                received += artifact_text(response.artifact_update)
                if len(received) > 10:
                    break
        await stream.aclose()
        rest, snapshot = "", ""
        async for event in c.subscribe(SubscribeToTaskRequest(id=task_id)):
            response = payload(event)
            kind = response.WhichOneof("payload")
            if kind == "task":
                snapshot = "".join(p.text for a in response.task.artifacts for p in a.parts)
            elif kind == "artifact_update":
                rest += artifact_text(response.artifact_update)
    # The snapshot holds everything produced so far (including what arrived before the
    # disconnect); the updates after it hold the rest, with nothing repeated.
    assert snapshot.startswith(received)
    assert snapshot + rest == text


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_a_second_turn_on_the_same_context_sees_the_first(cluster: Cluster, mode: str) -> None:
    context = str(uuid.uuid4())
    c = await client(cluster, "echo", mode, streaming=False)
    async with c:
        first = [payload(e) async for e in c.send_message(request("first turn", context))][-1].task
        second = [payload(e) async for e in c.send_message(request("second turn", context))][-1].task
    assert first.context_id == second.context_id == context
    history = [p.text for m in second.history for p in m.parts]
    assert history == ["first turn", "first turn", "second turn", "second turn"]
    # The agent's own memory of the context reached the model: a longer prompt.
    usage = lambda t: t.metadata["usage"]["promptTokens"]  # noqa: E731
    assert usage(second) > usage(first)


@pytest.mark.asyncio
async def test_the_sdk_over_tls(tls_cluster: Cluster) -> None:
    # Cards name https:// URLs, so the SDK posts where the head listens.
    card = httpx.get(tls_cluster.url + "/a2a/echo/.well-known/agent-card.json", verify=tls_cluster.verify).json()
    assert {i["url"] for i in card["supportedInterfaces"]} == {tls_cluster.url + "/a2a/echo", tls_cluster.url}, card
    # The SDK's own httpx client, trusting the test CA: HTTP/1.1 over TLS on the head's port.
    async with httpx.AsyncClient(verify=tls_cluster.verify) as http:
        factory = ClientFactory(ClientConfig(streaming=True, supported_protocol_bindings=["JSONRPC"], httpx_client=http))
        sdk = await factory.create_from_url(card_url(tls_cluster, "echo", "1.0"))
        text = ""
        async for event in sdk.send_message(request("over tls")):
            response = payload(event)
            if response.WhichOneof("payload") == "artifact_update":
                text += artifact_text(response.artifact_update)
        assert text == "over tls"
    # gRPC over TLS on the same port, trusting the same CA (the card read as before).
    ca = tls_cluster.tls_ca
    async with httpx.AsyncClient(verify=tls_cluster.verify) as http:
        sdk = await sdk_client(tls_cluster.url, "echo", "grpc", httpx_client=http,
                               grpc_channel_factory=lambda url: grpc_channel(url, ca))
        async with sdk:
            events = [payload(e) async for e in sdk.send_message(request("grpc over tls"))]
    text = "".join(artifact_text(e.artifact_update) for e in events if e.WhichOneof("payload") == "artifact_update")
    assert text == "grpc over tls" and events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    # Without the CA the certificate is refused.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_cluster.url + "/.well-known/agent-card.json")
