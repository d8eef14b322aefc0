"""A pydantic-ai agent run on the cluster as a Python agent (``af.from_pydantic_ai``).

    from pydantic_ai import Agent

    assistant = Agent(instructions="Be brief.", tools=[...])
    fleet.agent(af.from_pydantic_ai(assistant, model="SmolLM2-135M-Instruct.Q4_1.gguf"), ask_user=True)

Each task is one run of the agent (``Agent.run_stream_events``) on the cluster's model, with
the task's conversation as its message history. The agent's deferred tool calls (tools with
``requires_approval``, ``ApprovalRequired``, ``CallDeferred``) are answered during that same
run (a ``HandleDeferredToolCalls`` capability) by asking the task's user, so a pause never
ends the run and no pending state has to outlive the task.
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

import pydantic_core
from pydantic_ai import (
    AgentRunResultEvent,
    DeferredToolRequests,
    DeferredToolResults,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    SystemPromptPart,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolDenied,
    UserPromptPart,
)
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.capabilities import HandleDeferredToolCalls, ReinjectSystemPrompt
from pydantic_ai.models import Model
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from agentfleet.adapters import _conversation, _openai
from agentfleet.agents import AgentContext, AgentTask, agent as _python_agent

__all__ = ["from_pydantic_ai"]


def from_pydantic_ai(
    agent: AbstractAgent[Any, Any],
    *,
    model: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Any:
    """The Python agent that runs ``agent`` for each task, on the cluster's model ``model``
    (default: the agent's own model name, e.g. ``"openai:gpt-4o"``, when it is a string).

    Its name is ``name``, else the agent's name, with characters other than ``[A-Za-z0-9_.-]`` made ``-``; its
    description is ``description``, else the first paragraph of the agent's description or
    instructions. The agent runs without ``deps``: one whose tools need them cannot run here.
    """
    model_id = _model_id(agent, model)
    agent_name = _name(name or agent.name)

    async def run(task: AgentTask, ctx: AgentContext) -> AsyncIterator[str]:
        # The client is made per task: it answers from the models of the task running now.
        cluster_model = OpenAIChatModel(model_id, provider=OpenAIProvider(openai_client=_openai.openai_client()))
        handler = HandleDeferredToolCalls(handler=lambda _run, requests: _answer(ctx, requests))
        started: dict[str, str] = {}  # pydantic-ai's tool_call_id -> our call id, until its result
        try:
            async with agent.run_stream_events(
                task.input,
                message_history=_history(_conversation.turns(task)),
                model=cluster_model,
                instructions=task.instructions or None,
                # With a message history, pydantic-ai leaves the agent's system_prompt out unless
                # this puts it back; the cluster's history never holds it.
                capabilities=[ReinjectSystemPrompt(), handler],
                infer_name=False,  # it would name the agent after this closure's variable
            ) as events:
                async for event in events:
                    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                        if event.part.content:
                            yield event.part.content
                    elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                        if event.delta.content_delta:
                            yield event.delta.content_delta
                    elif isinstance(event, FunctionToolCallEvent):
                        call = event.part
                        started[call.tool_call_id] = ctx.tool_started(call.tool_name, call.args_as_json_str())
                    elif isinstance(event, FunctionToolResultEvent):
                        part = event.part
                        text = part.model_response_str(wrap_if_error=False)
                        # Failed, retried, denied: the tool gave no result; the text says why.
                        ctx.tool_ended(started.pop(part.tool_call_id), text, part.outcome != "success")
                    elif isinstance(event, AgentRunResultEvent):
                        # Text output has streamed above; structured output (an output tool's) has not.
                        output = event.result.output
                        if not isinstance(output, str):
                            yield pydantic_core.to_json(output).decode()
        except Exception as e:
            # A tool's exception ends the run (pydantic-ai retries only on ModelRetry): the calls
            # still open end with it, so none is left running in the task's events.
            for call_id in started.values():
                ctx.tool_ended(call_id, f"{type(e).__name__}: {e}", True)
            raise

    return _python_agent(name=agent_name, description=_description(agent, description))(run)


async def _answer(ctx: AgentContext, requests: DeferredToolRequests) -> DeferredToolResults:
    """Answers the run's deferred tool calls by asking the task's user, one call at a time:
    an approval is a yes/no (a refusal goes to the model with the reply as its reason); a
    call to be answered outside the agent (``CallDeferred``) gets the reply as its result."""
    results = DeferredToolResults()
    for call in requests.approvals:
        reply = await ctx.ask(
            f"The agent wants to call the tool {call.tool_name} with arguments {call.args_as_json_str()}. "
            "Approve? (yes/no)"
        )
        approved = reply.strip().lower().startswith(("y", "approve", "ok"))
        refusal = ToolDenied(f"The user refused this call: {reply}")
        results.approvals[call.tool_call_id] = True if approved else refusal
    for call in requests.calls:
        results.calls[call.tool_call_id] = await ctx.ask(_question(call))
    return results


def _question(call: ToolCallPart) -> str:
    """What to ask the user for a deferred call's result: the call's own question when it
    carries one (an ask-the-user tool), else the call itself."""
    args = call.args_as_dict()
    question = args.get("question")
    if isinstance(question, str):
        return question
    return f"The agent needs the result of the tool {call.tool_name} with arguments {call.args_as_json_str()}. What is it?"


def _history(messages: list[dict[str, str]]) -> list[ModelMessage]:
    """The task's conversation as pydantic-ai's message history."""
    history: list[ModelMessage] = []
    for message in messages:
        role, content = message.get("role"), message.get("content", "")
        if role == "assistant":
            history.append(ModelResponse(parts=[TextPart(content)]))
        elif role == "system":
            history.append(ModelRequest(parts=[SystemPromptPart(content)]))
        else:
            history.append(ModelRequest(parts=[UserPromptPart(content)]))
    return history


def _model_id(agent: AbstractAgent[Any, Any], model: str | None) -> str:
    """The cluster model the agent runs on: ``model``, else the agent's OpenAI model, named
    as pydantic-ai names it (``"openai:gpt-4o"`` is the cluster's ``openai:gpt-4o``). An
    agent keeps a model name as given only with ``defer_model_check=True``; otherwise it
    holds the model pydantic-ai made of it (``model_id`` names it again)."""
    if model is not None:
        return model
    own = agent.model
    if isinstance(own, str):
        return own
    if isinstance(own, Model) and own.system == "openai":
        return own.model_id
    raise TypeError(
        f"the agent's model is {own!r}, not one of OpenAI's: pass the cluster model to use, "
        "af.from_pydantic_ai(agent, model=...)"
    )


def _name(name: str | None) -> str:
    """The cluster's name for the agent: characters other than ``[A-Za-z0-9_.-]`` made ``-``."""
    if not name:
        raise ValueError("this agent has no name: give it one, Agent(name=...) or af.from_pydantic_ai(agent, name=...)")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _description(agent: AbstractAgent[Any, Any], description: str | None) -> str:
    if description is not None:
        return description
    # Literal instructions are kept privately (instruction functions have no text until a run).
    instructions = [i.instruction for i in getattr(agent, "_instructions", ()) if isinstance(i.instruction, str)]
    text = agent.description or next(iter(instructions), "")
    return text.split("\n\n")[0].strip()
