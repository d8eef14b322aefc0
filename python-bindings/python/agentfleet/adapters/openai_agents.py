"""An OpenAI Agents SDK agent (``agents.Agent``), run on the cluster as a Python agent.

    import agentfleet as af
    from agents import Agent, function_tool

    @function_tool(needs_approval=True)
    def delete_file(path: str) -> str:
        ...

    assistant = Agent(name="assistant", instructions="Be brief.", tools=[delete_file])
    fleet.agent(af.from_openai_agents(assistant, model="SmolLM2-135M-Instruct.Q4_1.gguf"), ask_user=True)

Each task is one ``Runner.run_streamed`` of the agent over the conversation, its model
calls answered by the worker's models through chat completions (the SDK's default, the
Responses API, is not served), with the SDK's tracing off: nothing leaves for OpenAI's
servers. A tool call that needs approval asks the task's user, and the run resumes from
its state with the answer.
"""

from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

from agentfleet.adapters import _conversation, _openai
from agentfleet.agents import AgentContext, AgentTask, agent as python_agent

from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner
from agents.items import ToolApprovalItem, ToolCallItem, ToolCallOutputItem
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent

__all__ = ["from_openai_agents"]

#: How a reply that approves a tool call starts (case-insensitive); any other refuses it.
_APPROVALS = ("y", "approve", "ok")


def from_openai_agents(
    agent: Agent[Any],
    *,
    model: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Any:
    """A Python agent that runs ``agent`` for each task, on the cluster's model ``model``
    (default: the agent's own model name as an ``openai:`` model, e.g. ``"gpt-4o"`` ->
    ``"openai:gpt-4o"``). The model serves every agent of the run, handoffs included.

    ``name`` defaults to the agent's name (characters a cluster name cannot hold become
    ``-``), ``description`` to its handoff description or its instructions' first paragraph.
    """
    cluster_model = model if model is not None else _model_of(agent)

    async def run(task: AgentTask, ctx: AgentContext) -> AsyncIterator[str]:
        # The client is the current task's: built here, not when the agent is defined.
        config = RunConfig(
            model=OpenAIChatCompletionsModel(model=cluster_model, openai_client=_openai.openai_client()),
            tracing_disabled=True,
        )
        started: dict[str, str] = {}  # the SDK's call id -> the task's
        refused: set[str] = set()
        run_input: Any = [*_conversation.turns(task), {"role": "user", "content": task.input}]
        while True:
            result = Runner.run_streamed(agent, run_input, run_config=config)
            try:
                async for event in result.stream_events():
                    text = _text_delta(event)
                    if text:
                        yield text
                    elif isinstance(event, RunItemStreamEvent):
                        _record_tool(ctx, event.item, started, refused)
            finally:
                if not result.is_complete:
                    result.cancel()  # the task ended early (canceled): stop the run too
            if not result.interruptions:
                return
            run_input = result.to_state()
            for pending in result.interruptions:
                reply = await ctx.ask(_question(pending))
                if reply.strip().lower().startswith(_APPROVALS):
                    run_input.approve(pending)
                else:
                    if pending.call_id:
                        refused.add(pending.call_id)
                    run_input.reject(
                        pending, rejection_message=f"The user refused to run {pending.name}: {reply}"
                    )

    return python_agent(
        name=name or re.sub(r"[^A-Za-z0-9_.-]", "-", agent.name),
        description=description if description is not None else _description(agent),
    )(run)


def _model_of(agent: Agent[Any]) -> str:
    """The cluster model for the agent's own model name: OpenAI's model of that name."""
    own = agent.model
    if isinstance(own, str) and own and "/" not in own.removeprefix("openai/"):
        return "openai:" + own.removeprefix("openai/")
    raise TypeError(
        f"agent {agent.name!r} names no OpenAI model (its model is {own!r}): pass "
        "model= to from_openai_agents, e.g. model=\"SmolLM2-135M-Instruct.Q4_1.gguf\""
    )


def _description(agent: Agent[Any]) -> str:
    """The agent's handoff description, else its instructions' first paragraph (when they
    are text, not a function)."""
    text = agent.handoff_description or (agent.instructions if isinstance(agent.instructions, str) else "")
    return text.strip().split("\n\n", 1)[0].strip()


def _text_delta(event: Any) -> str:
    """The text an event adds to the answer ("" for other events)."""
    if isinstance(event, RawResponsesStreamEvent) and event.data.type == "response.output_text.delta":
        return event.data.delta
    return ""


def _record_tool(ctx: AgentContext, item: Any, started: dict[str, str], refused: set[str]) -> None:
    """Shows the SDK's tool calls and their results in the task's events."""
    if isinstance(item, ToolCallItem) and item.call_id:
        raw = item.raw_item
        arguments = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", None)
        started[item.call_id] = ctx.tool_started(item.tool_name or "tool", _as_text(arguments or "{}"))
    elif isinstance(item, ToolCallOutputItem) and item.call_id in started:
        call_id = item.call_id
        ctx.tool_ended(started.pop(call_id), _as_text(item.output), is_error=call_id in refused)


def _question(pending: ToolApprovalItem) -> str:
    """The task's user's question for a tool call waiting for approval."""
    arguments = pending.arguments or "{}"
    return f"The agent wants to run the tool {pending.name} with the arguments {arguments}. Approve? (yes/no)"


def _as_text(value: Any) -> str:
    """A tool's arguments or output as the task's events hold them: text as is, else JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
