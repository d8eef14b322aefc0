"""Agents written with pydantic-ai, the OpenAI Agents SDK and LangGraph, run on the cluster
(`af.from_pydantic_ai`, `af.from_openai_agents`, `af.from_langgraph`) with the real packages
on SmolLM2 (real weights): the framework's model calls reach the worker's model through
`af.openai_client()` (a tool call under the model's grammar, then the answer), its tool
shows in the task's events as a call and its result, its text streams as the task's text,
and its human-in-the-loop pause is the task's input-required, answered by the client.

`af.openai_client()` itself: a tool call, a streamed answer with its usage, the head's
refusals naming their field, and a clear refusal outside a task."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import agentfleet as af
from conftest import smollm2_gguf

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Tokens each model call may write: enough for a call or a sentence, and quick.
MAX_TOKENS = 40
INSTRUCTIONS = "You answer questions about the weather. Use the get_weather tool."
QUESTION = "What is the weather in Paris?"

booked: list[str] = []


def get_weather(city: str) -> str:
    """Returns the weather of a city."""
    return f"sunny in {city}"


def book_trip(city: str) -> str:
    """Books a trip to a city."""
    booked.append(city)
    return f"booked a trip to {city}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[af.Fleet]:
    models = tmp_path_factory.mktemp("models")
    (models / SMOLLM2).symlink_to(smollm2_gguf())
    with af.init(workers=1, models_dir=models) as fleet:
        yield fleet


# ---- the three frameworks' agents: a tool forced on the first model call, then an answer --


def pydantic_ai_agent(tool: Callable[[str], str], approval: bool, name: str) -> Any:
    from pydantic_ai import Agent, ModelSettings, RunContext, Tool
    from pydantic_ai.capabilities import AbstractCapability

    class ToolFirst(AbstractCapability[Any]):
        """pydantic-ai's way to force a tool on the first step only."""

        def get_model_settings(self) -> Any:
            def settings(ctx: RunContext[Any]) -> ModelSettings:
                return {"tool_choice": "required"} if ctx.run_step <= 1 else {}

            return settings

    agent = Agent(
        name="weather",
        instructions=INSTRUCTIONS,
        tools=[Tool(tool, requires_approval=approval)],
        model_settings={"max_tokens": MAX_TOKENS, "temperature": 0.0},
        capabilities=[ToolFirst()],
    )
    return af.from_pydantic_ai(agent, model=SMOLLM2, name=name)


def openai_agents_agent(tool: Callable[[str], str], approval: bool, name: str) -> Any:
    from agents import Agent, ModelSettings, function_tool

    agent = Agent(
        name="weather",
        instructions=INSTRUCTIONS,
        tools=[function_tool(tool, needs_approval=approval)],
        # The SDK resets the choice to auto after a tool call (reset_tool_choice).
        model_settings=ModelSettings(tool_choice="required", max_tokens=MAX_TOKENS, temperature=0.0),
    )
    return af.from_openai_agents(agent, model=SMOLLM2, name=name)


def langgraph_agent(tool: Callable[[str], str], approval: bool, name: str) -> Any:
    from langchain_core.messages import AnyMessage, SystemMessage
    from langchain_core.tools import tool as as_tool
    from langgraph.graph import START, StateGraph
    from langgraph.graph.message import add_messages
    from langgraph.prebuilt import ToolNode
    from langgraph.types import interrupt
    from typing_extensions import Annotated, TypedDict

    from agentfleet.adapters.langgraph import chat_model

    def asked(city: str) -> str:
        """Books a trip to a city, once the user agrees."""
        reply = interrupt(f"Book a trip to {city}? (yes/no)")
        return tool(city) if str(reply).lower().startswith("y") else f"the user refused: {reply}"

    langchain_tool = as_tool(asked if approval else tool)
    langchain_tool.name = tool.__name__
    model = chat_model(SMOLLM2, max_tokens=MAX_TOKENS, temperature=0.0)
    calls = model.bind_tools([langchain_tool], tool_choice="required")

    class State(TypedDict):
        messages: Annotated[list[AnyMessage], add_messages]

    async def plan(state: State) -> dict[str, Any]:
        return {"messages": [await calls.ainvoke([SystemMessage(INSTRUCTIONS), *state["messages"]])]}

    async def answer(state: State) -> dict[str, Any]:
        return {"messages": [await model.ainvoke([SystemMessage(INSTRUCTIONS), *state["messages"]])]}

    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("tools", ToolNode([langchain_tool]))
    graph.add_node("answer", answer)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "tools")
    graph.add_edge("tools", "answer")
    return af.from_langgraph(graph.compile(), name=name)


FRAMEWORKS = {
    "pydantic-ai": pydantic_ai_agent,
    "openai-agents": openai_agents_agent,
    "langgraph": langgraph_agent,
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_frameworks_agent_calls_its_tool_and_streams_its_answer(fleet: af.Fleet, framework: str) -> None:
    agent = fleet.agent(FRAMEWORKS[framework](get_weather, approval=False, name=f"weather-{framework}"))
    task = agent.submit(QUESTION)
    answer = task.result(timeout=120)
    events = list(task.events())
    calls = [e for e in events if isinstance(e, af.ToolCall)]
    results = [e for e in events if isinstance(e, af.ToolResult)]
    # The model's call, written under SmolLM2's grammar, parsed and run by the framework.
    assert [c.tool for c in calls] == ["get_weather"], events
    city = json.loads(calls[0].arguments)["city"]
    assert isinstance(city, str) and city
    assert [(r.call_id, r.output, r.is_error) for r in results] == [(calls[0].call_id, f"sunny in {city}", False)]
    # The answer after the tool's result streamed, piece by piece, as the task's text.
    deltas = [e.text for e in events if isinstance(e, af.TextDelta)]
    assert len(deltas) > 1 and "".join(deltas) == answer and answer.strip(), deltas
    assert events.index(results[0]) < events.index(next(e for e in events if isinstance(e, af.TextDelta)))
    # Both model calls ran in the task: their tokens are its usage.
    completed = events[-1]
    assert isinstance(completed, af.Completed) and completed.prompt_tokens > 100, completed


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_frameworks_pause_waits_for_the_client(fleet: af.Fleet, framework: str) -> None:
    agent = fleet.agent(
        FRAMEWORKS[framework](book_trip, approval=True, name=f"booking-{framework}"), ask_user=True
    )
    booked.clear()
    task = agent.submit("Book me a trip to Paris.")
    request = task.wait_input(timeout=120)
    assert request is not None and task.state == "input-required", list(task.events())
    assert "book" in request.prompt.lower(), request.prompt
    assert booked == [], "the tool ran before the client agreed"
    task.reply("yes")
    answer = task.result(timeout=120)
    assert len(booked) == 1 and answer.strip()
    results = [e for e in task.events() if isinstance(e, af.ToolResult) and e.output.startswith("booked")]
    assert [r.output for r in results] == [f"booked a trip to {booked[0]}"]


@pytest.fixture
def model_requests(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The bodies of the in-process model calls made while the test runs (the embedded
    workers' Python agents run in this process)."""
    import httpx2

    from agentfleet.adapters import _openai

    seen: list[dict[str, Any]] = []
    bound = _openai.http_client

    async def record(request: httpx2.Request) -> None:
        seen.append(json.loads(request.content))

    def recording() -> httpx2.AsyncClient:
        client = bound()
        client.event_hooks["request"].append(record)
        return client

    monkeypatch.setattr(_openai, "http_client", recording)
    return seen


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_conversation_is_the_clusters(
    fleet: af.Fleet, framework: str, model_requests: list[dict[str, Any]]
) -> None:
    """A second turn of a context: the framework's model reads the first turn (the head's
    record of the conversation) before the new message."""
    agent = fleet.agent(FRAMEWORKS[framework](get_weather, approval=False, name=f"chat-{framework}"))
    context = f"trip-{framework}"
    first = agent.submit("My name is Ada and I live in Oslo.", context_id=context).result(timeout=120)
    model_requests.clear()
    agent.submit("What is the weather where I live?", context_id=context).result(timeout=120)
    assert model_requests, "the framework made no model call"
    said = [(m["role"], m.get("content")) for m in model_requests[0]["messages"] if m["role"] != "system"]
    assert said[:3] == [
        ("user", "My name is Ada and I live in Oslo."),
        ("assistant", first),
        ("user", "What is the weather where I live?"),
    ], said


def test_a_refused_approval_never_runs_the_tool(fleet: af.Fleet) -> None:
    agent = fleet.agent(pydantic_ai_agent(book_trip, approval=True, name="booking-refused"), ask_user=True)
    booked.clear()
    task = agent.submit("Book me a trip to Paris.")
    assert task.wait_input(timeout=120) is not None
    task.reply("no, not now")
    assert task.result(timeout=120).strip()
    assert booked == []
    refusals = [e for e in task.events() if isinstance(e, af.ToolResult) and "not now" in e.output]
    assert refusals, list(task.events())


# ---- af.openai_client() in an agent's own code --------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@af.agent
async def raw_client(task: af.AgentTask, ctx: af.AgentContext) -> Any:
    client = af.openai_client()
    called = await client.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": task.input}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=MAX_TOKENS,
    )
    call = called.choices[0].message.tool_calls[0]
    stream = await client.chat.completions.create(
        model=SMOLLM2,
        messages=[
            {"role": "user", "content": task.input},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=MAX_TOKENS,
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    try:
        await client.chat.completions.create(model=SMOLLM2, messages=[{"role": "user", "content": "hi"}], temperature=7)
        refused = ""
    except openai.BadRequestError as e:
        refused = f"{e.status_code} {e.body.get('param') if isinstance(e.body, dict) else e.body}"
    return json.dumps(
        {
            "finish": called.choices[0].finish_reason,
            "call": [call.function.name, json.loads(call.function.arguments)],
            "pieces": len(pieces),
            "text": "".join(pieces),
            "usage": usage.completion_tokens if usage else None,
            "refused": refused,
        }
    )


def test_openai_client_answers_from_the_workers_model(fleet: af.Fleet) -> None:
    task = fleet.agent(raw_client).submit(QUESTION)
    seen = json.loads(task.result(timeout=120))
    assert seen["finish"] == "tool_calls"
    assert seen["call"][0] == "get_weather" and isinstance(seen["call"][1]["city"], str)
    assert seen["pieces"] > 1 and seen["text"].strip()
    assert 0 < seen["usage"] <= MAX_TOKENS
    # The head's parser: a refusal names its field.
    assert seen["refused"] == "400 temperature"


def test_openai_client_outside_a_task_says_where_it_works() -> None:
    import asyncio

    async def outside() -> None:
        await af.openai_client().chat.completions.create(model=SMOLLM2, messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(openai.BadRequestError, match="inside a Python agent's task only"):
        asyncio.run(outside())
