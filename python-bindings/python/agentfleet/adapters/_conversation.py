"""The task's conversation as the frameworks take it: its text turns."""

from __future__ import annotations

from agentfleet.agents import AgentTask

#: The roles a framework's message history takes as plain text.
_TEXT_ROLES = ("system", "user", "assistant")


def turns(task: AgentTask) -> list[dict[str, str]]:
    """The conversation before the task, as ``{"role", "content"}`` text turns. The cluster's
    record also holds the tool steps of earlier turns (an assistant turn that only called
    tools, a tool's result) without their call ids, which no framework can pair up again:
    they are left out; each turn's answer says what came of them."""
    return [m for m in task.history if m.get("role") in _TEXT_ROLES and m.get("content")]
