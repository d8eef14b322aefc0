"""Tools on a local model (SmolLM2-135M-Instruct, whose template knows no tools) through the
official `openai` client: with `tool_choice="required"` 64 requests all come back as tool
calls that parse, name a given function and validate against its parameters; a named
function is called; `auto` answers or calls; calls stream as tool-call deltas; the results
sent back are answered; a conversation of only a system message is answered; bad tools are
400s naming the field, and the server keeps serving."""

import asyncio
import json

import jsonschema
import openai
import pytest
from conftest import SMOLLM2, Cluster

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Rome", "Lagos", "Quito", "Hanoi", "Dublin", "Madrid", "Seoul",
          "Nairobi", "Lisbon", "Vienna", "Prague", "Berlin", "Athens", "Bogota", "Manila", "Havana", "Dakar", "Kyiv", "Riga",
          "Bern", "Doha", "Delhi", "Sydney", "Osaka", "Munich", "Milan", "Porto"]


def check_calls(message: object) -> list[tuple[str, dict]]:
    calls = getattr(message, "tool_calls", None) or []
    assert calls, message
    out = []
    for call in calls:
        assert call.type == "function" and call.id
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, PARAMETERS[call.function.name])
        out.append((call.function.name, args))
    return out


def test_required_tool_calls_always_parse_and_validate(cluster: Cluster) -> None:
    prompts = [f"What is the weather in {c}?" for c in CITIES] + [f"What is {i * 7} plus {i * 11 + 2}?" for i in range(32)]

    async def ask_all() -> list[object]:
        client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=600)

        async def ask(i: int, prompt: str) -> object:
            reply = await client.chat.completions.create(
                model=SMOLLM2, messages=[{"role": "user", "content": prompt}], tools=TOOLS,  # type: ignore[list-item]
                tool_choice="required", max_tokens=80, temperature=0.0 if i % 2 == 0 else 0.8, seed=i,
            )
            assert reply.choices[0].finish_reason == "tool_calls", reply
            return reply.choices[0].message

        try:
            return await asyncio.gather(*(ask(i, p) for i, p in enumerate(prompts)))
        finally:
            await client.close()

    messages = asyncio.run(ask_all())
    names = [check_calls(m)[0][0] for m in messages]
    # The model chose its tools: mostly the one each question is about.
    fitting = sum(n == "get_weather" for n in names[:32]) + sum(n == "add" for n in names[32:])
    assert fitting >= 40, names


def test_a_named_function_is_called_and_auto_may_answer(cluster: Cluster) -> None:
    client = cluster.client()
    named = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Tell me a joke."}], tools=TOOLS,  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=60,
    )
    [(name, _)] = check_calls(named.choices[0].message)
    assert name == "add" and named.choices[0].finish_reason == "tool_calls"
    auto = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Say hello."}], tools=TOOLS, max_tokens=40,  # type: ignore[list-item]
    )
    message = auto.choices[0].message
    if message.tool_calls:
        check_calls(message)
    else:
        assert message.content and "<tool_call>" not in message.content
    # tool_choice none: no calls, a plain answer.
    none = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "What is the weather in Oslo?"}], tools=TOOLS,  # type: ignore[list-item]
        tool_choice="none", max_tokens=30,
    )
    assert not none.choices[0].message.tool_calls and none.choices[0].message.content


def test_calls_stream_and_their_results_are_answered(cluster: Cluster) -> None:
    client = cluster.client()
    question = [{"role": "user", "content": "What is 2 plus 40?"}]
    stream = client.chat.completions.create(
        model=SMOLLM2, messages=question, tools=[ADD], tool_choice="required", max_tokens=60, stream=True,  # type: ignore[arg-type,list-item]
    )
    deltas, finish = [], None
    for chunk in stream:
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and deltas
    call = deltas[0]
    assert call.index == 0 and call.id and call.function and call.function.name == "add"
    args = json.loads(call.function.arguments or "")
    jsonschema.validate(args, PARAMETERS["add"])
    # The client runs the tool and sends the result back; the model answers it.
    conversation = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "add", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": str(sum(args.values()))},
    ]
    answer = client.chat.completions.create(model=SMOLLM2, messages=conversation, tools=[ADD], tool_choice="none", max_tokens=40)  # type: ignore[arg-type,list-item]
    assert answer.choices[0].message.content and answer.usage is not None
    assert answer.usage.prompt_tokens > 20  # the call and its result were in the prompt


def test_a_conversation_of_only_a_system_message_is_answered(cluster: Cluster) -> None:
    reply = cluster.client().chat.completions.create(
        model=SMOLLM2, messages=[{"role": "system", "content": "Greet the user in one short sentence."}], max_tokens=20,
    )
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")


def test_bad_tools_are_400s_naming_the_field(cluster: Cluster) -> None:
    client = cluster.client()
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=SMOLLM2, messages=hi, max_tokens=5, **extra)  # type: ignore[arg-type, call-overload]
        assert bad.value.param == param, (extra, bad.value.body)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=SMOLLM2, messages=[*hi, {"role": "assistant", "content": "yes?"}], max_tokens=5)  # type: ignore[arg-type]
    assert bad.value.param == "messages[1].role"
    ok = client.chat.completions.create(model=SMOLLM2, messages=hi, max_tokens=5)  # type: ignore[arg-type]
    assert ok.choices[0].message.content is not None


def test_n_choices_streamed_or_not(cluster: Cluster) -> None:
    client = cluster.client()
    ask = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=SMOLLM2, messages=ask, n=4, temperature=1.0, seed=3, max_tokens=8)  # type: ignore[arg-type]
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.message.content for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) >= 2  # seeds 3..6: different samples
    assert reply.usage is not None and reply.usage.completion_tokens >= 4
    # The same seeds streamed give the same four answers, interleaved by index.
    texts = ["", "", "", ""]
    finishes: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(model=SMOLLM2, messages=ask, n=4, temperature=1.0, seed=3, max_tokens=8,  # type: ignore[arg-type]
                                                stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts == [c.message.content for c in reply.choices]
    assert sorted(finishes) == [0, 1, 2, 3]
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
    # With tools, every choice calls.
    calls = client.chat.completions.create(model=SMOLLM2, messages=[{"role": "user", "content": "Weather in Oslo?"}], n=3,  # type: ignore[arg-type]
                                           tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0.8, seed=1)  # type: ignore[list-item]
    assert len(calls.choices) == 3 and all(check_calls(c.message) for c in calls.choices)
