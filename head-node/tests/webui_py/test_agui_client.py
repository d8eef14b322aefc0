"""The AG-UI door with the official client, `@ag-ui/client`'s HttpAgent in Node (agui_client.cjs):
which validates every event against AG-UI's schemas and ordering rules and assembles the
agent's messages. Echo agents and SmolLM2: a streamed answer, a frontend tool called and
answered (also beside the agent's own tools), a question and an approval as interrupts resumed by the next run, a cancelled
interrupt, a failure, and a client that aborts (its task is canceled)."""

import json

import httpx
from conftest import Cluster
from fleetproc import wait_until

CALL_HELPER = '<tool_call>{"name": "helper", "arguments": {"input": "hello"}}</tool_call>'
ASK = '<tool_call>{"name": "ask_user", "arguments": {"question": "Which city?"}}</tool_call>'


def task_of(message_id: str) -> str:
    """The task an AG-UI message id was made by (`TASK-SEQ`)."""
    return message_id.rsplit("-", 1)[0]


def test_an_answer_streams_as_one_assistant_message(cluster: Cluster) -> None:
    seen = cluster.node("text", "echo", "hello there agui")
    first = seen["first"]
    assert first["types"] == ["RUN_STARTED", "TEXT_MESSAGE_START", *["TEXT_MESSAGE_CONTENT"] * 3, "TEXT_MESSAGE_END", "RUN_FINISHED"], first
    assert first["finished"] == [{"outcome": "success", "pendingToolCallIds": []}]
    assert first["usage"][0]["outputTokens"] == 3 and first["usage"][0]["totalTokens"] == 6
    assert [(m["role"], m["content"]) for m in seen["messages"]] == [("user", "hello there agui"), ("assistant", "hello there agui")]


def test_smollm2_answers_through_the_official_client(cluster: Cluster) -> None:
    seen = cluster.node("text", "smol", "What is the capital of France?")
    first = seen["first"]
    assert first["types"][0] == "RUN_STARTED" and first["types"][-1] == "RUN_FINISHED", first
    assert first["types"].count("TEXT_MESSAGE_CONTENT") > 1, "the answer streams token by token"
    assert "Paris" in first["text"], first["text"]
    assert seen["messages"][-1] == {"id": seen["messages"][-1]["id"], "role": "assistant", "content": first["text"]}


def test_a_frontend_tool_call_is_left_to_the_client_and_its_result_answered(cluster: Cluster) -> None:
    seen = cluster.node("frontend_tool", "echo")
    first, second = seen["first"], seen["second"]
    assert first["types"] == ["RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED"], first
    [pending] = first["finished"][0]["pendingToolCallIds"]
    call = seen["messages"][1]["toolCalls"][0]
    assert call["id"] == pending and call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # The client's result, sent in the next run, is what the agent answers.
    assert second["text"] == "sunny, 21 degrees" and second["finished"][0]["outcome"] == "success", second
    assert [m["role"] for m in seen["messages"]] == ["user", "assistant", "tool", "assistant"]


def test_an_agent_with_tools_of_its_own_takes_frontend_tools_too(cluster: Cluster) -> None:
    own = cluster.node("mixed_tools", "toolful", CALL_HELPER)["first"]
    assert own["types"][1:5] == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"], own
    assert own["result"] == "hello" and own["text"] == "hello"
    assert own["finished"] == [{"outcome": "success", "pendingToolCallIds": []}]
    frontend = cluster.node("mixed_tools", "toolful", '<tool_call>{"name": "weather", "arguments": {"city": "Lima"}}</tool_call>')["first"]
    assert frontend["types"] == ["RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED"], frontend
    assert len(frontend["finished"][0]["pendingToolCallIds"]) == 1
    # A name neither side offers is the client's to answer, as when its tools were all.
    made_up = cluster.node("mixed_tools", "toolful", '<tool_call>{"name": "nowhere", "arguments": {}}</tool_call>')["first"]
    assert made_up["types"] == ["RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED"], made_up
    assert len(made_up["finished"][0]["pendingToolCallIds"]) == 1


def test_the_agents_own_calls_in_two_runs_stay_apart(cluster: Cluster) -> None:
    seen = cluster.node("two_runs", "toolful", CALL_HELPER)
    calls = [call for m in seen["messages"] for call in m.get("toolCalls", [])]
    assert len(calls) == 2 and calls[0]["id"] != calls[1]["id"], calls
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"input": "hello"}] * 2
    results = [m for m in seen["messages"] if m["role"] == "tool"]
    assert [r["toolCallId"] for r in results] == [c["id"] for c in calls]


def test_an_approval_is_an_interrupt_and_approving_runs_the_tool(cluster: Cluster) -> None:
    seen = cluster.node("interrupt", "guarded", CALL_HELPER, "", json.dumps({"approved": True}))
    first, second = seen["first"], seen["second"]
    [finished] = first["finished"]
    assert finished["outcome"] == "interrupt", first
    # The call waiting for approval is shown before the question about it.
    assert first["types"] == ["RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED"], first
    [interrupt] = finished["interrupts"]
    assert interrupt["reason"] == "tool_approval" and interrupt["toolCallId"]
    assert "helper" in interrupt["message"] and interrupt["expiresAt"].endswith("Z")
    assert interrupt["responseSchema"]["required"] == ["approved"]
    # The resumed run is the same task going on: the tool ran, its result answered.
    assert "TOOL_CALL_RESULT" in second["types"] and second["result"] == "hello", second
    assert "TOOL_CALL_START" not in second["types"], "the call was announced once, in the first run"
    assert interrupt["toolCallId"] == seen["messages"][1]["toolCalls"][0]["id"]
    assert second["text"] == "hello" and second["finished"][0]["outcome"] == "success"
    assert seen["pendingAfter"] == []
    assert task_of(seen["messages"][-1]["id"]) == interrupt["id"].split("@")[0]


def test_a_refused_approval_reaches_the_agent_as_the_reason(cluster: Cluster) -> None:
    seen = cluster.node("interrupt", "guarded", CALL_HELPER, "", json.dumps({"approved": False, "reason": "not today"}))
    second = seen["second"]
    assert "not today" in second["result"], second
    assert second["finished"][0]["outcome"] == "success"


def test_a_question_is_an_interrupt_answered_by_the_next_run(cluster: Cluster) -> None:
    seen = cluster.node("interrupt", "asker", ASK, "", json.dumps("Paris"))
    first, second = seen["first"], seen["second"]
    [interrupt] = first["finished"][0]["interrupts"]
    assert (interrupt["reason"], interrupt["message"]) == ("question", "Which city?"), interrupt
    assert second["text"] == "Paris", second


def test_a_cancelled_interrupt_declines_the_question(cluster: Cluster) -> None:
    seen = cluster.node("interrupt", "asker", ASK, "", "null")
    assert "declined" in seen["second"]["result"], seen["second"]


def test_a_failed_task_is_a_run_error(cluster: Cluster) -> None:
    first = cluster.node("text", "broken", "hi")["first"]
    assert first["types"] == ["RUN_STARTED", "RUN_ERROR"], first
    [error] = first["errors"]
    assert error["code"] == "invalid_request" and "token_delay_ms" in error["message"], error


def test_a_client_that_aborts_cancels_its_task(cluster: Cluster) -> None:
    words = " ".join(f"w{i}" for i in range(100))  # 10 s at 100 ms a word
    seen = cluster.node("abort", "slow", words)
    assert seen["first"]["aborted"] and seen["first"]["text"] == "w0", seen["first"]
    task = task_of(seen["messages"][-1]["id"])

    def state() -> str:
        r = httpx.get(f"{cluster.url}/a2a/slow/tasks/{task}", headers={"A2A-Version": "1.0"})
        assert r.status_code == 200, r.text
        return str(r.json()["status"]["state"])

    assert wait_until(lambda: "CANCEL" in state().upper(), timeout=5, what="the task canceled")


def test_an_expired_interrupt_cancelled_ends_the_run_and_the_thread_goes_on(cluster: Cluster) -> None:
    seen = cluster.node("expired", "hasty", ASK)
    assert seen["first"]["finished"][0]["outcome"] == "interrupt", seen["first"]
    # The task failed at the question's deadline; resuming shows that and lets it go.
    second = seen["second"]
    assert "thrown" not in second, second
    assert second["types"] == ["RUN_STARTED", "CUSTOM", "RUN_FINISHED"], second
    assert second["finished"] == [{"outcome": "cancelled"}], second
    assert seen["stuck"] == [], "the client holds no interrupt that is gone"
    assert seen["third"]["text"] == "hello again", seen["third"]
