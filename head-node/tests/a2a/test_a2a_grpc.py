"""A2A 1.0's gRPC binding with the official a2a-sdk's gRPC client (grpcio): what the
JSON-RPC suites do not already run over gRPC (they run their scenarios in a "grpc" mode):
listing, push configs and their delivery, errors with A2A's reasons, credentials, the
extended card, and requests the head refuses while it keeps serving."""

import asyncio
import uuid

import grpc
import pytest
from a2a.client import ClientCallContext
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    SendMessageConfiguration,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import (
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from conftest import Cluster, grpc_channel, sdk_client
from test_a2a_http import Webhook, await_final_task
from test_a2a_sdk import payload, request

pytestmark = pytest.mark.asyncio


async def send(c, text: str, context_id: str = "", **configuration: object) -> a2a_pb2.Task:  # type: ignore[no-untyped-def]
    r = request(text, context_id)
    if configuration:
        r.configuration.CopyFrom(SendMessageConfiguration(**configuration))  # type: ignore[arg-type]
    events = [payload(e) async for e in c.send_message(r)]
    return events[-1].task


def reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a gRPC error's google.rpc.Status details."""
    from google.rpc import error_details_pb2, status_pb2

    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    status = status_pb2.Status.FromString(details)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info), status
    assert info.domain in ("a2a-protocol.org", "agentfleet"), info
    return info.reason


def raw_stub(cluster: Cluster) -> tuple[grpc.aio.Channel, a2a_pb2_grpc.A2AServiceStub]:
    """grpcio's own stub, for requests the SDK would not build."""
    channel = grpc_channel(cluster.url)
    return channel, a2a_pb2_grpc.A2AServiceStub(channel)


async def test_tasks_are_listed_and_canceled_and_push_configs_managed_and_delivered(cluster: Cluster) -> None:
    context = str(uuid.uuid4())
    c = await sdk_client(cluster.url, "slow", "grpc", streaming=False)
    hook = Webhook(failures=0)
    try:
        async with c:
            running = await send(c, " ".join(f"w{i}" for i in range(200)), context, return_immediately=True)
            assert running.context_id == context
            listed = await c.list_tasks(ListTasksRequest(context_id=context))
            assert [t.id for t in listed.tasks] == [running.id] and listed.total_size == 1

            config = TaskPushNotificationConfig(task_id=running.id, id="g1", url=hook.url, token="tok")
            created = await c.create_task_push_notification_config(config)
            assert (created.id, created.task_id, created.url, created.token) == ("g1", running.id, hook.url, "tok")
            got = await c.get_task_push_notification_config(GetTaskPushNotificationConfigRequest(task_id=running.id, id="g1"))
            assert got.url == hook.url
            configs = await c.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=running.id))
            assert [x.id for x in configs.configs] == ["g1"]

            canceled = await c.cancel_task(CancelTaskRequest(id=running.id))
            assert canceled.status.state == TaskState.TASK_STATE_CANCELED
            # The config made over gRPC delivers the end like any other.
            assert await_final_task(hook)["status"]["state"] == "TASK_STATE_CANCELED"

            for _ in range(2):  # deleting is idempotent
                await c.delete_task_push_notification_config(DeleteTaskPushNotificationConfigRequest(task_id=running.id, id="g1"))
            configs = await c.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=running.id))
            assert list(configs.configs) == []
    finally:
        hook.close()


async def test_errors_carry_a2a_reasons_and_the_head_keeps_serving(cluster: Cluster) -> None:
    c = await sdk_client(cluster.url, "echo", "grpc", streaming=False)
    async with c:
        with pytest.raises(TaskNotFoundError, match="nope"):
            await c.get_task(GetTaskRequest(id="nope"))
        done = await send(c, "finished")
        assert done.status.state == TaskState.TASK_STATE_COMPLETED
        with pytest.raises(TaskNotCancelableError):
            await c.cancel_task(CancelTaskRequest(id=done.id))
        streaming = await sdk_client(cluster.url, "echo", "grpc")
        async with streaming:
            with pytest.raises(UnsupportedOperationError, match="GetTask"):
                async for _ in streaming.subscribe(SubscribeToTaskRequest(id=done.id)):
                    pass
        with pytest.raises(InvalidParamsError, match="taskId"):
            await c.create_task_push_notification_config(TaskPushNotificationConfig(url="http://127.0.0.1:9/hook"))

    channel, stub = raw_stub(cluster)
    async with channel:
        version = [("a2a-version", "1.0")]
        message = request("x").message
        # No tenant: the request names no agent.
        with pytest.raises(grpc.aio.AioRpcError) as no_tenant:
            await stub.SendMessage(a2a_pb2.SendMessageRequest(message=message), metadata=version)
        assert no_tenant.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tenant" in (no_tenant.value.details() or "")
        # A tenant naming no agent.
        with pytest.raises(grpc.aio.AioRpcError) as nobody:
            await stub.SendMessage(a2a_pb2.SendMessageRequest(tenant="nobody", message=message), metadata=version)
        assert nobody.value.code() == grpc.StatusCode.NOT_FOUND and "nobody" in (nobody.value.details() or "")
        assert reason(nobody.value) == "AGENT_NOT_FOUND"
        # A head without client credentials has no audience for an extended card (the
        # SDK does not ask: its card says so).
        with pytest.raises(grpc.aio.AioRpcError) as no_card:
            await stub.GetExtendedAgentCard(GetExtendedAgentCardRequest(tenant="echo"), metadata=version)
        assert no_card.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(no_card.value) == "EXTENDED_AGENT_CARD_NOT_CONFIGURED"
        # A version the head does not serve.
        with pytest.raises(grpc.aio.AioRpcError) as old:
            await stub.GetTask(a2a_pb2.GetTaskRequest(tenant="echo", id="x"), metadata=[("a2a-version", "0.3")])
        assert old.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "0.3" in (old.value.details() or "")
        # A message past the head's input limit (as for the JSON bindings' bodies) is
        # refused before it is decoded (tonic's status for it: OUT_OF_RANGE).
        huge = a2a_pb2.SendMessageRequest(tenant="echo", message=request("x" * (4 << 20)).message)
        with pytest.raises(grpc.aio.AioRpcError) as too_big:
            await stub.SendMessage(huge, metadata=version)
        assert too_big.value.code() == grpc.StatusCode.OUT_OF_RANGE and "limit" in (too_big.value.details() or "")
        # Still serving, on the same channel.
        answer = await stub.SendMessage(a2a_pb2.SendMessageRequest(tenant="echo", message=message), metadata=version)
        assert answer.task.status.state == TaskState.TASK_STATE_COMPLETED


async def test_the_client_credential_is_metadata_as_it_is_a_header(keyed_cluster: Cluster) -> None:
    keyed = ClientCallContext(service_parameters={"authorization": "Bearer k3y"})
    c = await sdk_client(keyed_cluster.url, "echo", "grpc", streaming=False)
    async with c:
        with pytest.raises(Exception, match="UNAUTHENTICATED|credential|token"):
            await c.get_task(GetTaskRequest(id="any"))
        with pytest.raises(Exception, match="UNAUTHENTICATED|credential|token"):
            await c.get_task(GetTaskRequest(id="any"), context=ClientCallContext(service_parameters={"authorization": "Bearer wrong"}))
        events = [payload(e) async for e in c.send_message(request("with a key"), context=keyed)]
        assert events[-1].task.status.state == TaskState.TASK_STATE_COMPLETED
        # X-API-Key works as over HTTP.
        got = await c.get_task(GetTaskRequest(id=events[-1].task.id), context=ClientCallContext(service_parameters={"x-api-key": "k3y"}))
        assert got.id == events[-1].task.id
        # The extended card: the public one plus what the agent is built from.
        card = await c.get_extended_agent_card(GetExtendedAgentCardRequest(), context=keyed)
        assert card.name == "echo" and "model builtin:echo" in card.skills[0].description
        grpc_interface = next(i for i in card.supported_interfaces if i.protocol_binding == "GRPC")
        assert grpc_interface.tenant == "echo" and grpc_interface.url == keyed_cluster.url


async def test_many_clients_at_once_each_get_their_own_answer(cluster: Cluster) -> None:
    c = await sdk_client(cluster.url, "echo", "grpc")
    async with c:
        async def one(i: int) -> str:
            text = ""
            async for event in c.send_message(request(f"client {i} says hi")):
                response = payload(event)
                if response.WhichOneof("payload") == "artifact_update":
                    text += "".join(p.text for p in response.artifact_update.artifact.parts)
            return text

        answers = await asyncio.gather(*(one(i) for i in range(50)))
    assert answers == [f"client {i} says hi" for i in range(50)]
