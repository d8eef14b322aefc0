"""The names of task states, event kinds and error kinds, as ``Literal`` types: what
``task.state``, ``event.kind`` and ``error.kind`` hold."""

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from typing_extensions import TypeAlias

__all__ = ["ErrorKind", "EventKind", "TaskState"]

#: A task's state (``task.state``), as the head, the CLI and A2A name it.
TaskState: "TypeAlias" = Literal[
    "queued", "scheduled", "working", "input-required", "completed", "failed", "canceled"
]

#: An event's kind (``event.kind``); each has its class (``af.TextDelta``, ...).
EventKind: "TypeAlias" = Literal[
    "submitted",
    "scheduled",
    "working",
    "text_delta",
    "reasoning_delta",
    "tool_call",
    "tool_result",
    "embeddings",
    "artifact",
    "completed",
    "failed",
    "canceled",
    "input_required",
    "input_received",
    "retrying",
    "state_saved",
]

#: A failure's kind (``FleetError.kind``, ``Failed.error_kind``); each has its class
#: (``af.BusyError``, ...).
ErrorKind: "TypeAlias" = Literal[
    "internal",
    "invalid_request",
    "unknown_task",
    "unknown_agent",
    "busy",
    "unavailable",
    "unsupported",
    "not_cancelable",
    "content_type_not_supported",
    "unauthenticated",
    "permission_denied",
    "canceled",
]
