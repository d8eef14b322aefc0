"""`fleet acp AGENT`: a cluster agent as an Agent Client Protocol agent, driven on stdio by
the official ACP client (@agentclientprotocol/sdk, acp_client.mjs), which checks every
message against the protocol's schema. Sessions are the head's conversations: a prompt
streams as session updates, an approval asks the editor, a question is a form or the turn's
last message, a cancel stops the task, a second process loads a session and replays it."""

import json
import subprocess
import sys
import time
from typing import Any

from conftest import Cluster, node
from fleetproc import binary
from test_agui_client import ASK, CALL_HELPER


def acp(cluster: Cluster, agent: str, *extra: str, **plan: Any) -> Any:
    """Runs the official client against `fleet acp AGENT` (or plan["command"]); what it saw."""
    command = plan.pop("command", None) or [binary("fleet"), "acp", agent, "--head", cluster.url, *extra]
    seen = node("acp_client.mjs", json.dumps({"command": command, **plan}), timeout=90)
    assert seen["exitCode"] == 0, seen
    return seen


def text(updates: "list[dict[str, Any]]", kind: str = "agent_message_chunk") -> str:
    return "".join(u["content"]["text"] for u in updates if u["sessionUpdate"] == kind and u["content"]["type"] == "text")


def kinds(updates: "list[dict[str, Any]]") -> "list[str]":
    return [u["sessionUpdate"] for u in updates]


def fleet(cluster: Cluster, *args: str) -> str:
    done = subprocess.run([binary("fleet"), "--head", cluster.url, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_session_is_a_conversation_and_another_process_loads_it(cluster: Cluster) -> None:
    seen = acp(cluster, "echo", prompts=["hello there acp", "and again"], list=True)
    assert seen["init"]["protocolVersion"] == 1
    capabilities = seen["init"]["agentCapabilities"]
    assert capabilities["loadSession"] is True and capabilities["promptCapabilities"]["embeddedContext"] is True
    first, second = seen["turns"]
    assert (text(first["updates"]), first["stopReason"]) == ("hello there acp", "end_turn"), first
    assert len(first["updates"]) > 1, "the answer streams"
    assert first["meta"]["agentfleet"]["usage"]["completionTokens"] == 3
    assert text(second["updates"]) == "and again"
    session = seen["session"]
    assert session in [s["sessionId"] for s in seen["list"]["sessions"]]
    # The head keeps the conversation under the session's id: a new process replays it.
    assert "hello there acp" in fleet(cluster, "context", session, "--agent", "echo")
    loaded = acp(cluster, "echo", load=session, prompts=["third"])
    assert text(loaded["loaded"], "user_message_chunk") == "hello there acpand again"
    assert text(loaded["loaded"]) == "hello there acpand again"
    assert text(loaded["turns"][0]["updates"]) == "third"


def test_smollm2_streams_its_answer(cluster: Cluster) -> None:
    turn = acp(cluster, "smol", prompts=["What is the capital of France?"])["turns"][0]
    assert turn["stopReason"] in ("end_turn", "max_tokens"), turn
    assert kinds(turn["updates"]).count("agent_message_chunk") > 1, "token by token"
    assert "Paris" in text(turn["updates"]), turn


def test_an_approval_asks_the_editor_and_allowing_runs_the_tool(cluster: Cluster) -> None:
    seen = acp(cluster, "guarded", prompts=[CALL_HELPER], permission="allow")
    (asked,) = seen["permissions"]
    assert asked["toolCall"]["title"] == "helper" and asked["toolCall"]["rawInput"] == {"input": "hello"}
    assert [o["kind"] for o in asked["options"]] == ["allow_once", "reject_once"]
    turn = seen["turns"][0]
    assert kinds(turn["updates"]) == ["tool_call", "tool_call_update", "tool_call_update", *["agent_message_chunk"] * (len(turn["updates"]) - 3)], turn
    call, running, done = turn["updates"][:3]
    assert call["status"] == "pending" and call["toolCallId"] == asked["toolCall"]["toolCallId"]
    assert (running["status"], done["status"]) == ("in_progress", "completed")
    assert done["content"][0]["content"]["text"] == "hello"
    assert text(turn["updates"]) == "hello" and turn["stopReason"] == "end_turn"


def test_a_rejected_approval_fails_the_call_and_the_agent_hears_why(cluster: Cluster) -> None:
    turn = acp(cluster, "guarded", prompts=[CALL_HELPER], permission="reject")["turns"][0]
    failed = [u for u in turn["updates"] if u["sessionUpdate"] == "tool_call_update"]
    assert failed[0]["status"] == "failed" and "rejected" in failed[0]["content"][0]["content"]["text"], turn
    assert "rejected in the editor" in text(turn["updates"]) and turn["stopReason"] == "end_turn"


def test_a_question_is_a_form_when_the_editor_takes_forms(cluster: Cluster) -> None:
    seen = acp(cluster, "asker", prompts=[ASK], forms=True, answer="Lima")
    assert [f["message"] for f in seen["forms"]] == ["Which city?"]
    assert seen["forms"][0]["requestedSchema"]["required"] == ["answer"]
    turn = seen["turns"][0]
    assert text(turn["updates"]) == "Lima" and turn["stopReason"] == "end_turn", turn


def test_without_forms_a_question_ends_the_turn_and_the_next_prompt_answers_it(cluster: Cluster) -> None:
    seen = acp(cluster, "asker", prompts=[ASK, "Quito"])
    asked, answered = seen["turns"]
    assert text(asked["updates"]) == "Which city?" and asked["stopReason"] == "end_turn", asked
    assert asked["meta"]["agentfleet"]["waitsForAnswer"] is True
    assert text(answered["updates"]) == "Quito", answered
    # The answer went to the task that asked: one task, completed.
    assert answered["meta"]["agentfleet"]["taskId"] == asked["meta"]["agentfleet"]["taskId"]


def test_cancel_stops_the_task(cluster: Cluster) -> None:
    seen = acp(cluster, "slow", prompts=["one two three four five six seven eight nine ten"], cancelAfter=2)
    turn = seen["turns"][0]
    assert turn["stopReason"] == "cancelled", turn
    assert len(turn["updates"]) < 10, "cancelled before the whole answer streamed"
    assert turn["meta"]["agentfleet"]["taskId"] in fleet(cluster, "tasks", "--agent", "slow", "--state", "canceled")


def test_a_failed_task_is_the_prompts_error_and_the_agent_keeps_serving(cluster: Cluster) -> None:
    seen = acp(cluster, "broken", prompts=["hi", "hi again"])
    for turn in seen["turns"]:
        assert turn["error"]["code"] == -32603 and "failed" in turn["error"]["message"], turn
        assert turn["error"]["data"]["taskId"] and turn["error"]["data"]["kind"] == "invalid_request"


def test_refusals_name_what_to_fix(cluster: Cluster) -> None:
    image = [{"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}]
    turn = acp(cluster, "echo", prompts=[image, "still here"])["turns"]
    assert turn[0]["error"]["code"] == -32602 and turn[0]["error"]["data"]["field"] == "prompt[0].type", turn[0]
    assert text(turn[1]["updates"]) == "still here"


def test_an_unknown_agent_or_session_is_not_found(cluster: Cluster) -> None:
    replies = raw(cluster, "nobody", [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": "/tmp", "mcpServers": []}},
        {"jsonrpc": "2.0", "id": 3, "method": "session/load", "params": {"sessionId": "acp-none", "cwd": "/tmp", "mcpServers": []}},
        {"jsonrpc": "2.0", "id": 4, "method": "session/prompt", "params": {"sessionId": "acp-none", "prompt": []}},
    ])
    assert replies[2]["error"]["code"] == -32002 and '"nobody"' in replies[2]["error"]["message"], replies[2]
    assert replies[3]["error"]["code"] == -32002, replies[3]
    assert replies[4]["error"]["code"] == -32602 and replies[4]["error"]["data"]["field"] == "prompt", replies[4]


def raw(cluster: Cluster, agent: str, messages: "list[Any]", *extra: str) -> "dict[Any, Any]":
    """Writes `messages` (JSON values, or raw lines as str) to `fleet acp`'s stdin, closes
    it, and returns its answers by id."""
    lines = "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)
    done = subprocess.run([binary("fleet"), "acp", agent, "--head", cluster.url, *extra], input=lines, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    return {a.get("id"): a for a in answers if "method" not in a}


def test_a_line_that_is_not_json_rpc_is_answered_and_the_next_served(cluster: Cluster) -> None:
    replies = raw(cluster, "echo", [
        "{not json",
        {"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {"protocolVersion": 1}},
        {"jsonrpc": "2.0", "id": 8, "method": "session/set_mode", "params": {}},
        {"jsonrpc": "2.0", "id": 9, "method": "session/new", "params": {"cwd": "relative", "mcpServers": []}},
    ])
    assert replies[None]["error"]["code"] == -32700, replies
    assert replies[7]["result"]["protocolVersion"] == 1
    assert replies[8]["error"]["code"] == -32601
    assert replies[9]["error"]["data"]["field"] == "cwd"


def test_python_m_agentfleet_acp_is_the_same_agent(cluster: Cluster) -> None:
    command = [sys.executable, "-m", "agentfleet", "acp", "echo", "--head", cluster.url]
    turn = acp(cluster, "echo", command=command, prompts=["from python"])["turns"][0]
    assert text(turn["updates"]) == "from python" and turn["stopReason"] == "end_turn"


def test_an_editor_that_goes_away_cancels_its_turn(cluster: Cluster) -> None:
    with subprocess.Popen([binary("fleet"), "acp", "slow", "--head", cluster.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as agent:
        assert agent.stdin and agent.stdout
        send = lambda m: (agent.stdin.write(json.dumps(m) + "\n"), agent.stdin.flush())  # noqa: E731
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}})
        send({"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": "/tmp", "mcpServers": []}})
        session = ""
        while not session:
            session = json.loads(agent.stdout.readline()).get("result", {}).get("sessionId", "")
        prompt = [{"type": "text", "text": "a b c d e f g h i j k l m n o p"}]
        send({"jsonrpc": "2.0", "id": 3, "method": "session/prompt", "params": {"sessionId": session, "prompt": prompt}})
        while json.loads(agent.stdout.readline()).get("method") != "session/update":
            pass
        task = fleet(cluster, "tasks", "--agent", "slow", "--limit", "1").splitlines()[1].split()[0]
        agent.stdin.close()
        assert agent.wait(timeout=15) == 0
    deadline = time.monotonic() + 15
    while task not in fleet(cluster, "tasks", "--agent", "slow", "--state", "canceled"):
        assert time.monotonic() < deadline, fleet(cluster, "tasks", "--agent", "slow")
        time.sleep(0.1)


def test_a_keyed_head_wants_the_token(keyed: Cluster) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}}
    new = {"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": "/tmp", "mcpServers": []}}
    refused = raw(keyed, "echo", [hello, new])[2]
    assert refused["error"]["code"] == -32000 and "FLEET_TOKEN" in refused["error"]["message"], refused
    turn = acp(keyed, "echo", "--token", "k3y", prompts=["with the key"])["turns"][0]
    assert text(turn["updates"]) == "with the key"
