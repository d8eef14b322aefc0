"""Agents written with other frameworks, run on the cluster as Python agents.

    import agentfleet as af
    from pydantic_ai import Agent

    assistant = Agent(instructions="Be brief.", tools=[...])
    fleet = af.init(models_dir="~/models")
    fleet.agent(af.from_pydantic_ai(assistant, model="SmolLM2-135M-Instruct.Q4_1.gguf"), ask_user=True)

``af.from_pydantic_ai(agent)``, ``af.from_langgraph(graph)`` and
``af.from_openai_agents(agent)`` each return a Python agent (``@af.agent``) that runs the
framework's agent for every task:

- its model calls go to the worker's models (local files, ``builtin:``, ``openai:``) through
  an OpenAI client whose transport answers OpenAI's chat completions API in this process
  (``af.openai_client()``): no key, no extra hop, the tokens count in the task's usage, and
  a canceled task stops its generation;
- the conversation is the cluster's (``context_id``): the task's history is the framework's
  message history;
- its streamed text streams as the task's text;
- each tool it runs shows in the task's events as a call and its result;
- its human-in-the-loop pauses (pydantic-ai's tools that require approval, LangGraph's
  ``interrupt``, the Agents SDK's ``needs_approval``) become the task's input-required: the
  task's user answers (register the agent with ``ask_user=True``).

The frameworks are not dependencies of agentfleet: each adapter imports its framework when
it is first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_langgraph", "from_openai_agents", "from_pydantic_ai", "openai_client"]


def openai_client() -> Any:
    """An ``openai.AsyncOpenAI`` whose chat completions (``await
    client.chat.completions.create(model=..., messages=..., tools=..., stream=...)``) the
    worker running the current task answers from its models, inside this process: usable in
    any Python agent's task; outside one, a request gets a 400 saying so. See
    ``agentfleet.adapters._openai``. Needs ``openai``."""
    try:
        from agentfleet.adapters import _openai
    except ImportError as e:
        raise ImportError(f"af.openai_client() needs the openai package: pip install openai ({e})") from e
    return _openai.openai_client()


def from_pydantic_ai(
    agent: Any, *, model: "str | None" = None, name: "str | None" = None, description: "str | None" = None
) -> Any:
    """A pydantic-ai ``Agent`` as a Python agent on the cluster's model ``model`` (default:
    the agent's own OpenAI model name, as ``openai:NAME``); see
    ``agentfleet.adapters.pydantic_ai``. Needs ``pydantic-ai-slim[openai]``."""
    try:
        from agentfleet.adapters import pydantic_ai
    except ImportError as e:
        raise ImportError(f"af.from_pydantic_ai needs pydantic-ai: pip install 'pydantic-ai-slim[openai]' ({e})") from e
    return pydantic_ai.from_pydantic_ai(agent, model=model, name=name, description=description)


def from_langgraph(graph: Any, *, name: "str | None" = None, description: "str | None" = None) -> Any:
    """A compiled LangGraph graph as a Python agent; its models are built with
    ``agentfleet.adapters.langgraph.chat_model(model)``. See
    ``agentfleet.adapters.langgraph``. Needs ``langgraph`` and ``langchain-openai``."""
    try:
        from agentfleet.adapters import langgraph
    except ImportError as e:
        raise ImportError(f"af.from_langgraph needs LangGraph: pip install langgraph langchain-openai ({e})") from e
    return langgraph.from_langgraph(graph, name=name, description=description)


def from_openai_agents(
    agent: Any, *, model: "str | None" = None, name: "str | None" = None, description: "str | None" = None
) -> Any:
    """An OpenAI Agents SDK ``Agent`` as a Python agent on the cluster's model ``model``
    (default: the agent's model name, as ``openai:NAME``); see
    ``agentfleet.adapters.openai_agents``. Needs ``openai-agents``."""
    try:
        from agentfleet.adapters import openai_agents
    except ImportError as e:
        raise ImportError(f"af.from_openai_agents needs the OpenAI Agents SDK: pip install openai-agents ({e})") from e
    return openai_agents.from_openai_agents(agent, model=model, name=name, description=description)
