"""LangGraph graphs as Python agents.

    import agentfleet as af
    from agentfleet.adapters.langgraph import chat_model
    from langgraph.prebuilt import create_react_agent

    graph = create_react_agent(chat_model("SmolLM2-135M-Instruct.Q4_1.gguf"), tools=[add], name="calculator")
    fleet.agent(af.from_langgraph(graph), ask_user=True)

A graph holds its models, so it is built with ``chat_model(...)``: a ``ChatOpenAI`` whose
requests the worker answers, for whichever task runs it. Each task runs the graph on a
checkpoint thread of its own, with the task's history and input as its ``messages``; the
graph's ``interrupt(value)`` asks the task's user and resumes the graph with the reply.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from agentfleet.adapters import _conversation, _openai
from agentfleet.agents import AgentContext, AgentTask, agent

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel
from langgraph.types import Command, Interrupt, StreamMode
from pydantic import SecretStr

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = ["chat_model", "from_langgraph"]

#: The model's text, the nodes' updates (tool calls and results, interrupts) and the state
#: (the answer of a graph whose nodes write it without a model).
_STREAM_MODES: list[StreamMode] = ["messages", "updates", "values"]


def chat_model(model: str, **kwargs: Any) -> "ChatOpenAI":
    """A LangChain chat model for the cluster's model ``model`` (a model id of the workers,
    e.g. ``"SmolLM2-135M-Instruct.Q4_1.gguf"``), to build graphs with; ``kwargs`` go to
    ``ChatOpenAI`` (``temperature=``, ``max_tokens=``, ...). It may be built at import time
    and serve many tasks: its HTTP client finds the running task at each request. Graphs
    run it asynchronously (``ainvoke``, ``astream``), as ``from_langgraph`` does."""
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as e:
        raise ImportError("chat_model needs langchain-openai: pip install langchain-openai") from e
    return ChatOpenAI(
        model=model,
        base_url=_openai.BASE_URL,
        api_key=SecretStr("agentfleet"),
        http_async_client=_openai.http_client(),
        **kwargs,
    )


def from_langgraph(graph: Any, *, name: "str | None" = None, description: "str | None" = None) -> Any:
    """A Python agent that runs ``graph`` (a compiled graph: ``StateGraph(...).compile()``,
    ``create_react_agent(...)``, an ``@entrypoint``) for each task.

    A graph with a ``messages`` channel gets the task's history and input as its messages;
    another graph gets the input text. What its models stream is the task's text; the tool
    calls and results in its messages are the task's tool events; ``interrupt(value)`` asks
    the user ``value`` (JSON when not a str) and resumes with ``Command(resume=reply)``.

    The conversation is the cluster's (``task.history``), so the graph runs on an in-memory
    checkpointer of this adapter, one thread per task, forgotten when the task ends: a
    checkpointer compiled into the graph is not used (its ``store`` is)."""
    if not isinstance(graph, Pregel):
        raise TypeError(
            "from_langgraph takes a compiled graph (StateGraph(...).compile(), "
            f"create_react_agent(...), @entrypoint), not {type(graph).__name__}"
        )
    saver = InMemorySaver()
    # A copy: resuming after interrupt() needs a checkpointer, and the caller's graph stays as it was.
    runnable = graph.copy({"checkpointer": saver})
    takes_messages = "messages" in graph.channels

    async def run(task: AgentTask, ctx: AgentContext) -> AsyncIterator[str]:
        thread_id = uuid.uuid4().hex
        config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
        payload: Any = _messages_input(task) if takes_messages else task.input
        tools = _ToolEvents(ctx)
        streamed = False
        try:
            while True:
                interrupts: list[Interrupt] = []
                at_breakpoint = False
                final: Any = None
                # subgraphs=True: the text and tools of nested agents (a supervisor's workers) count too.
                async for part in runnable.astream(
                    payload, config, stream_mode=_STREAM_MODES, subgraphs=True, version="v2"
                ):
                    if part["type"] == "messages":
                        message = part["data"][0]
                        if isinstance(message, AIMessage) and message.text:
                            streamed = True
                            yield str(message.text)
                    elif part["type"] == "values":
                        if not part["ns"]:
                            final = part["data"]
                    elif part["type"] == "updates":
                        for node, update in part["data"].items():
                            if node != "__interrupt__":
                                tools.record(update)
                            elif not part["ns"]:  # a subgraph's pause shows again at the root
                                interrupts.extend(update)
                                at_breakpoint = at_breakpoint or not update
                if at_breakpoint:
                    # interrupt_before/interrupt_after pause with no question to ask the user.
                    raise RuntimeError(
                        "the graph stopped at a breakpoint (interrupt_before/interrupt_after), which "
                        "from_langgraph does not resume: ask with interrupt(value) in a node instead"
                    )
                if not interrupts:
                    # Nodes that write messages without a model (or an @entrypoint's result)
                    # stream nothing: the answer is then the graph's output.
                    answer = None if streamed else _answer(final)
                    if answer:
                        yield answer
                    return
                if len(interrupts) == 1:
                    payload = Command(resume=await ctx.ask(_question(interrupts[0].value)))
                else:  # parallel branches paused together: each is answered by its id
                    payload = Command(resume={i.id: await ctx.ask(_question(i.value)) for i in interrupts})
        finally:
            await saver.adelete_thread(thread_id)

    return agent(name=name or _agent_name(graph.name), description=description if description is not None else "")(run)


class _ToolEvents:
    """Turns the tool calls and tool results in a graph's state updates into the task's tool
    events, once each (nested graphs repeat their messages in their parents' updates)."""

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        #: Our call ids of the tool calls started, by the model's tool call id.
        self._started: dict[str, str] = {}
        self._ended: set[str] = set()

    def record(self, update: Any) -> None:
        for message in _messages_of(update):
            if isinstance(message, AIMessage):
                for call in message.tool_calls:
                    if call["id"] and call["id"] not in self._started:
                        self._started[call["id"]] = self._ctx.tool_started(call["name"], json.dumps(call["args"]))
            elif isinstance(message, ToolMessage):
                call_id = self._started.get(message.tool_call_id)
                if call_id is not None and message.tool_call_id not in self._ended:
                    self._ended.add(message.tool_call_id)
                    output = message.content if isinstance(message.content, str) else json.dumps(message.content)
                    self._ctx.tool_ended(call_id, output, is_error=message.status == "error")


def _messages_of(update: Any) -> Iterator[BaseMessage]:
    """The messages a node's update writes: its ``messages`` (one or a list), or those of
    each of its updates when it made several (a list, as ``ToolNode``'s commands make)."""
    if isinstance(update, BaseMessage):
        yield update
    elif isinstance(update, dict):
        yield from _messages_of(update.get("messages"))
    elif isinstance(update, (list, tuple)):
        for item in update:
            yield from _messages_of(item)


def _answer(output: Any) -> "str | None":
    """The answer text in a graph's output: a str, or its last message when that is the model's."""
    if isinstance(output, str):
        return output
    messages = output.get("messages") if isinstance(output, dict) else getattr(output, "messages", None)
    if isinstance(messages, list) and messages and isinstance(messages[-1], AIMessage):
        return str(messages[-1].text)
    return None


def _messages_input(task: AgentTask) -> dict[str, Any]:
    return {"messages": convert_to_messages([*_conversation.turns(task), {"role": "user", "content": task.input}])}


def _question(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _agent_name(graph_name: str) -> str:
    """A cluster agent name (``[A-Za-z0-9_.-]+``) from the graph's name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", graph_name) or "LangGraph"
