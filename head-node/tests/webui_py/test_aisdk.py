"""The Vercel AI SDK door (`/ai-sdk/{agent}`) with the `ai` package's own client side in Node
(aisdk_chat.cjs): `DefaultChatTransport`, the transport `useChat` uses, which validates every
chunk against the UI message stream's schema, and `readUIMessageStream`, which builds the
assistant message from them. Echo agents and SmolLM2: a streamed answer with its usage, the
agent's own tool call as a tool part with its output, a client's tool left for the client
and its output answered, a failure, and the refusals."""

import json
from typing import Any

import httpx
from conftest import Cluster

CALL_HELPER = '<tool_call>{"name": "helper", "arguments": {"input": "hi"}}</tool_call>'
WEATHER = {"name": "weather", "description": "The weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def user(text: str) -> dict[str, Any]:
    return {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}


def types(seen: Any) -> list[str]:
    return [chunk["type"] for chunk in seen["chunks"]]


def test_an_answer_streams_as_text_with_its_usage(cluster: Cluster) -> None:
    seen = cluster.chat("echo", [user("hello ai sdk")])
    assert types(seen) == ["start", "start-step", "text-start", *["text-delta"] * 3, "text-end", "finish-step", "finish"], seen
    message = seen["message"]
    assert message["role"] == "assistant"
    assert [p for p in message["parts"] if p["type"] == "text"] == [{"type": "text", "text": "hello ai sdk", "state": "done"}]
    assert message["metadata"]["usage"]["outputTokens"] == 3
    assert seen["chunks"][-1]["finishReason"] == "stop"


def test_smollm2_answers_through_the_transport(cluster: Cluster) -> None:
    seen = cluster.chat("smol", [user("What is the capital of France?")])
    assert types(seen).count("text-delta") > 1, seen
    [text] = [p["text"] for p in seen["message"]["parts"] if p["type"] == "text"]
    assert "Paris" in text, text


def test_the_agents_own_tool_call_is_a_tool_part_with_its_output(cluster: Cluster) -> None:
    seen = cluster.chat("toolful", [user(CALL_HELPER)])
    [tool] = [p for p in seen["message"]["parts"] if p["type"] == "dynamic-tool"]
    assert (tool["toolName"], tool["state"], tool["input"], tool["output"]) == ("helper", "output-available", {"input": "hi"}, "hi"), tool
    # A step per model call: the call, then the answer.
    assert [p["type"] for p in seen["message"]["parts"]] == ["step-start", "dynamic-tool", "step-start", "text"]


def test_a_client_tool_is_left_to_the_client_and_its_output_answered(cluster: Cluster) -> None:
    ask = user('<tool_call>{"name": "weather", "arguments": {"city": "Lima"}}</tool_call>')
    seen = cluster.chat("echo", [ask], tools=[WEATHER])
    [tool] = [p for p in seen["message"]["parts"] if p["type"] == "dynamic-tool"]
    assert (tool["toolName"], tool["state"], tool["input"]) == ("weather", "input-available", {"city": "Lima"}), tool
    assert seen["chunks"][-1]["finishReason"] == "tool-calls"
    # What useChat sends once the app added the tool's output: the agent answers it, going on
    # with the same assistant message.
    answered = {**seen["message"], "parts": [*seen["message"]["parts"][:-1], {**tool, "state": "output-available", "output": "sunny"}]}
    again = cluster.chat("echo", [ask, answered], tools=[WEATHER])
    assert "messageId" not in again["chunks"][0], again["chunks"][0]
    assert [p["text"] for p in again["message"]["parts"] if p["type"] == "text"] == ["sunny"], again


def test_an_approval_is_declined_and_shown_on_its_call(cluster: Cluster) -> None:
    seen = cluster.chat("guarded", [user(CALL_HELPER.replace('"hi"', '"hello"'))])
    [tool] = [p for p in seen["message"]["parts"] if p["type"] == "dynamic-tool"]
    assert (tool["toolName"], tool["state"]) == ("helper", "output-error"), tool
    assert "nobody can answer" in tool["errorText"], tool
    assert seen["chunks"][-1]["type"] == "finish", seen["chunks"][-1]


def test_the_openai_door_refuses_client_tools_for_an_agent_with_its_own(cluster: Cluster) -> None:
    body = {"model": "toolful", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "weather"}}]}
    refused = httpx.post(f"{cluster.url}/v1/chat/completions", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools", refused.text
    assert "/agui/toolful" in refused.json()["error"]["message"]


def test_a_failed_task_is_an_error_chunk(cluster: Cluster) -> None:
    seen = cluster.chat("broken", [user("hi")])
    assert types(seen) == ["start", "start-step", "error"], seen
    assert "token_delay_ms" in seen["chunks"][-1]["errorText"]
    assert "token_delay_ms" in seen["streamError"]


def test_refusals_name_the_field_and_the_door_keeps_serving(cluster: Cluster) -> None:
    url = f"{cluster.url}/ai-sdk/echo"
    bad = httpx.post(url, json={"messages": [{"id": "1", "role": "user", "parts": [{"type": "file", "url": "x", "mediaType": "image/png"}]}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].parts[0].type", bad.text
    assert httpx.post(url, json={"messages": []}).json()["error"]["param"] == "messages"
    unknown = httpx.post(f"{cluster.url}/ai-sdk/nobody", json={"messages": [user("hi")]})
    assert unknown.status_code == 404, unknown.text
    # The transport's resume finds no stream to resume.
    assert httpx.get(f"{url}/chat-1/stream").status_code == 204
    # The transport surfaces a refusal as an error with the body's message.
    seen = cluster.chat("nobody", [user("hi")])
    assert "nobody" in seen["thrown"], seen
    assert cluster.chat("echo", [user("still here")])["message"]["parts"][-1]["text"] == "still here"
    stream = httpx.post(url, json={"id": "c", "messages": [user("raw")]})
    assert stream.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert stream.text.rstrip().endswith("data: [DONE]"), stream.text
    json.loads(stream.text.split("data: ", 2)[1])
