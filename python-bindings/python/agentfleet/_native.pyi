"""Type stubs of the native core of agentfleet (checked with mypy.stubtest)."""

import os
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, final, overload

from typing_extensions import disjoint_base

from agentfleet.agents import AgentFile, Artifact
from agentfleet.kinds import ErrorKind, EventKind, TaskState
from agentfleet.options import Resources, Sampling

__version__: str

# A JSON Schema as a dict, or a pydantic model class (its ``model_json_schema()``).
_OutputSchema: TypeAlias = dict[str, Any] | type[Any] | bool
__all__ = [
    "Agent",
    "ArtifactEvent",
    "AsyncEventIterator",
    "BusyError",
    "Canceled",
    "CanceledError",
    "Completed",
    "ContentTypeNotSupportedError",
    "Embeddings",
    "Event",
    "EventIterator",
    "Failed",
    "Fleet",
    "FleetError",
    "InputReceived",
    "InputRequired",
    "InternalError",
    "InvalidRequestError",
    "NotCancelableError",
    "PermissionDeniedError",
    "ReasoningDelta",
    "Retrying",
    "Scheduled",
    "StateSaved",
    "Submitted",
    "Task",
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "TopicFollower",
    "TopicMessage",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownAgentError",
    "UnknownTaskError",
    "UnsupportedError",
    "Working",
    "_AgentHost",
    "_Chunks",
    "_ToolHost",
    "__version__",
    "_init",
    "_run_cli",
    "_run_head",
    "_run_worker",
    "write_random_weight_model",
]

class FleetError(Exception):
    """Base class of agentfleet's errors: ``kind`` names the kind of failure, ``task_id``
    the task that failed (None when the cluster refused a call)."""

    kind: ErrorKind
    task_id: str | None

class InternalError(FleetError): ...
class InvalidRequestError(FleetError): ...
class UnknownTaskError(FleetError): ...
class UnknownAgentError(FleetError): ...
class BusyError(FleetError): ...
class UnavailableError(FleetError): ...
class UnsupportedError(FleetError): ...
class NotCancelableError(FleetError): ...
class ContentTypeNotSupportedError(FleetError): ...
class UnauthenticatedError(FleetError): ...
class PermissionDeniedError(FleetError): ...
class CanceledError(FleetError): ...

@disjoint_base
class Event:
    """One event of a task; each kind is a subclass with the fields of its kind."""

    @property
    def task_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def kind(self) -> EventKind: ...
    @property
    def timestamp_us(self) -> int: ...
    @property
    def is_final(self) -> bool: ...

@final
class Submitted(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def agent(self) -> str: ...

@final
class Scheduled(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def worker_id(self) -> str: ...

@final
class Working(Event):
    __match_args__: ClassVar[tuple[str, ...]]

@final
class TextDelta(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def text(self) -> str: ...

@final
class ReasoningDelta(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def text(self) -> str: ...

@final
class ToolCall(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def call_id(self) -> str: ...
    @property
    def tool(self) -> str: ...
    @property
    def arguments(self) -> str: ...
    @property
    def replayed(self) -> bool: ...

@final
class ToolResult(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def call_id(self) -> str: ...
    @property
    def output(self) -> str: ...
    @property
    def is_error(self) -> bool: ...

@final
class Embeddings(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def count(self) -> int: ...

@final
class ArtifactEvent(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def name(self) -> str: ...
    @property
    def artifact(self) -> Artifact: ...

@final
class Completed(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...

@final
class Failed(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def error(self) -> str: ...
    @property
    def error_kind(self) -> ErrorKind: ...
    @property
    def worker_id(self) -> str: ...

@final
class Canceled(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def reason(self) -> str: ...

@final
class InputRequired(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def prompt(self) -> str: ...
    @property
    def call_id(self) -> str: ...
    @property
    def tool(self) -> str: ...
    @property
    def arguments(self) -> str: ...

@final
class InputReceived(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def call_id(self) -> str: ...
    @property
    def reply(self) -> str: ...
    @property
    def rejected(self) -> bool: ...

@final
class Retrying(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def reason(self) -> str: ...

@final
class StateSaved(Event):
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def state(self) -> dict[str, Any]: ...

@final
class EventIterator:
    def __iter__(self) -> EventIterator: ...
    def __next__(self) -> Event: ...

@final
class AsyncEventIterator:
    def __aiter__(self) -> AsyncEventIterator: ...
    def __anext__(self) -> Awaitable[Event]: ...

@final
class TopicMessage:
    """A message of a topic's log."""
    @property
    def topic(self) -> str: ...
    @property
    def publisher(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def published_at(self) -> float: ...
    @property
    def group(self) -> str | None: ...
    def ack(self) -> int:
        """Acknowledges the message for its consumer group; the group's committed offset."""

@final
class TopicFollower:
    """A topic's messages as they are stored (``fleet.follow``)."""
    @property
    def topic(self) -> str: ...
    @property
    def group(self) -> str | None: ...
    def __iter__(self) -> TopicFollower: ...
    def __next__(self) -> TopicMessage: ...
    def __aiter__(self) -> TopicFollower: ...
    def __anext__(self) -> Awaitable[TopicMessage]: ...
    def ack(self, offsets: list[int]) -> int:
        """Acknowledges messages of the group by offset; the group's committed offset."""
    def close(self) -> None: ...
    def __enter__(self) -> TopicFollower: ...
    def __exit__(self, *_args: object) -> bool: ...

@final
class Task:
    @property
    def id(self) -> str: ...
    def result(self, timeout: float | None = None) -> Any:
        """The task's text, or under an output schema its answer parsed (a pydantic model
        instance for a model class, else what ``json.loads`` gives)."""
    def artifacts(self, timeout: float | None = None) -> list[Artifact]:
        """The files and data the task returned beside its text, in order (waits and raises
        as ``result()`` does)."""
    def cancel(self) -> None: ...
    @property
    def state(self) -> TaskState:
        """queued, scheduled, working, input-required, completed, failed or canceled."""
    @property
    def input_request(self) -> InputRequired | None:
        """The event the task waits on (``prompt`` the question; ``tool`` and ``arguments``
        set when a tool call waits for approval), or None."""
    def wait_input(self, timeout: float | None = None) -> InputRequired | None:
        """Waits until the task needs input (its ``InputRequired`` event) or ends (None)."""
    def reply(self, text: str) -> None:
        """Answers the question the task waits on (for an approval: "yes"/"approve"
        approves, anything else rejects)."""
    def approve(self) -> None:
        """Approves the tool call the task waits on."""
    def reject(self, reason: str = ...) -> None:
        """Rejects the tool call the task waits on (or declines its question)."""
    def done(self) -> bool: ...
    def events(self) -> EventIterator: ...
    def aevents(self) -> AsyncEventIterator: ...
    def aresult(self) -> Awaitable[Any]: ...
    def __await__(self) -> Generator[Any, None, Any]:
        """``await task``: the answer, as ``await task.aresult()``."""

@final
class Agent:
    @property
    def name(self) -> str: ...
    def submit(
        self,
        prompt: str,
        context_id: str | None = None,
        *,
        output_schema: _OutputSchema | None = None,
        files: list[AgentFile | os.PathLike[str]] | None = None,
    ) -> Task:
        """Submits one task. Under ``output_schema`` (default: the agent's) the answer is
        generated in the schema's shape and ``result()`` returns it parsed. ``files`` go
        with it (``AgentFile``s, or paths read now): a Python agent gets them in
        ``task.files``; a model agent takes none."""
    def map(
        self,
        prompts: list[str],
        *,
        ordered: bool = True,
        progress: bool | None = None,
        context_id: str | list[str] | None = None,
        output_schema: _OutputSchema | None = None,
    ) -> list[Any]:
        """One task per prompt in parallel; their texts, or parsed answers under an output
        schema. ``context_id``: one conversation for all, or a list of one per prompt."""
    def stream(
        self,
        prompt: str,
        context_id: str | None = None,
        *,
        output_schema: _OutputSchema | None = None,
        files: list[AgentFile | os.PathLike[str]] | None = None,
    ) -> EventIterator: ...
    def asubmit(
        self,
        prompt: str,
        context_id: str | None = None,
        *,
        output_schema: _OutputSchema | None = None,
        files: list[AgentFile | os.PathLike[str]] | None = None,
    ) -> Awaitable[Task]:
        """Submits one task; awaiting it gives the ``Task`` (``await task``: its answer)."""
    def options(
        self,
        *,
        sampling: Sampling | None = None,
        output_schema: _OutputSchema | None = None,
        context_id: str | None = None,
    ) -> Agent:
        """This agent with per-call settings (as Ray's ``.options()``): its tasks sample with
        ``sampling`` over the agent's defaults, answer in ``output_schema`` and continue
        ``context_id``, unless a call gives its own."""
    def astream(
        self,
        prompt: str,
        context_id: str | None = None,
        *,
        output_schema: _OutputSchema | None = None,
        files: list[AgentFile | os.PathLike[str]] | None = None,
    ) -> AsyncEventIterator: ...
    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embeds ``texts`` as one task on the agent's model (an embedding model such as
        all-MiniLM-L6-v2): one L2-normalised vector per text, in order. A model that does
        not embed raises InvalidRequestError with the worker's reason."""
    def map_embed(
        self,
        texts: list[str],
        *,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> list[list[float]]:
        """Embeds many texts in parallel: one task per ``batch_size`` texts, spread over the
        cluster's workers; one vector per text, in order. Progress bar and Ctrl-C as for
        ``map``."""
    def aembed(self, texts: list[str]) -> Awaitable[list[list[float]]]:
        """``embed`` for asyncio."""

@final
class _AgentHost:
    """The native side of the Python agents this process hosts (see ``agentfleet.agents``)."""
    def __new__(cls, names: list[str]) -> _AgentHost: ...
    def next_batch(self) -> list[tuple[Any, ...]] | None: ...
    def text(self, run: int, text: str) -> None: ...
    def artifact(
        self,
        run: int,
        name: str,
        description: str,
        media_type: str,
        data: bytes | None,
        url: str,
        json: str | None,
    ) -> bool: ...
    def finish(self, run: int, error: str | None = None, state: str | None = None) -> None: ...
    def save(self, run: int, state: str) -> Awaitable[None]: ...
    def chat(
        self,
        run: int,
        model: str,
        messages: list[tuple[str, str]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] = ...,
    ) -> Awaitable[str]: ...
    def call(self, run: int, tool: str, arguments: str) -> Awaitable[tuple[str, bool]]: ...
    def publish(self, run: int, topic: str, messages: list[str]) -> Awaitable[tuple[str, bool]]: ...
    def openai_chat(self, run: int, body: bytes) -> Awaitable[tuple[int, bytes, _Chunks | None]]: ...
    def tool_started(self, run: int, name: str, arguments: str) -> str: ...
    def tool_ended(self, run: int, call_id: str, output: str, is_error: bool = False) -> bool: ...
    def close(self) -> None: ...

@final
class _Chunks:
    """The server-sent events of a streamed in-process chat completion."""
    def next(self) -> Awaitable[bytes | None]: ...
    def close(self) -> None: ...

@final
class _ToolHost:
    """The native side of this process hosting tools (see ``agentfleet.tools``)."""
    def register(self, tools: list[tuple[str, str, str, int]]) -> list[str]: ...
    def next(self) -> tuple[Any, ...] | None: ...
    def answer(self, call: int, output: str, is_error: bool) -> None: ...
    def close(self) -> None: ...

@final
class Fleet:
    @property
    def address(self) -> str: ...
    @property
    def token(self) -> str | None: ...
    @property
    def embedded(self) -> bool: ...
    def agent(
        self,
        name: str | type | Callable[..., Any],
        model: str | None = None,
        *,
        instructions: str = ...,
        tools: list[str | Callable[..., Any]] | None = None,
        description: str = ...,
        sampling: Sampling | None = None,
        resources: Resources | None = None,
        max_retries: int | None = None,
        max_concurrency: int = 0,
        labels: dict[str, str] | None = None,
        model_options: dict[str, str] | None = None,
        topics: list[str] = ...,
        output_schema: _OutputSchema | None = None,
        mcp: list[dict[str, object]] = ...,
        tool_choice: str = ...,
        requires_approval: list[str | Callable[..., Any]] = ...,
        ask_user: bool = False,
        input_timeout: float | None = None,
        call_once: list[str | Callable[..., Any]] = ...,
    ) -> Agent:
        """Registers (or updates) agent ``name`` on ``model``, or a Python agent
        (``@af.agent``) given as itself. ``fleet.get_agent(name)`` looks one up."""
    def get_agent(self, name: str, *, output_schema: _OutputSchema | None = None) -> Agent:
        """The agent registered as ``name`` (``UnknownAgentError`` if there is none)."""
    def tool(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        requires_approval: bool = False,
        idempotent: bool = True,
    ) -> Any:
        """Hosts a function as a tool of the cluster's agents in this process
        (``@fleet.tool``, ``@fleet.tool(timeout=5)`` or ``fleet.tool(fn)``)."""
    def _open_tool_host(self) -> _ToolHost: ...
    def _agent_host(self) -> _AgentHost | None: ...
    def status(self) -> dict[str, object]: ...
    def context(self, context_id: str, agent: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Each agent's turns in context ``context_id``, oldest first."""
    def contexts(
        self, context_id: str | None = None, agent: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The conversations the cluster keeps, the most recently continued first."""
    def delete_context(self, context_id: str, agent: str | None = None) -> int:
        """Forgets the context's conversations; how many there were."""
    def actor_state(self, agent: str | object, context_id: str | None = None) -> dict[str, Any]:
        """The state an actor keeps, as the head stored it."""
    def actor_states(
        self, agent: str | object | None = None, context_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The actor states the head keeps, the most recently saved first."""
    @overload
    def publish(self, topic: str, message: str, *, publisher: str | None = None) -> int:
        """Publishes on ``topic``; the message's offset once stored."""
    @overload
    def publish(self, topic: str, message: list[str], *, publisher: str | None = None) -> list[int]: ...
    def follow(
        self, topic: str, *, from_offset: int | None = None, group: str | None = None
    ) -> TopicFollower:
        """Follows ``topic``'s log from an offset (or from now on), or in a consumer group."""
    def shutdown(self) -> None: ...
    def __enter__(self) -> Fleet: ...
    def __exit__(self, *_args: object) -> bool: ...

def _init(address: str | None, options: dict[str, Any]) -> Fleet:
    """``agentfleet.init``'s native half: ``options`` are init's keyword arguments."""
def _run_head(argv: list[str]) -> int: ...
def _run_worker(argv: list[str], agents: _AgentHost | None = None) -> int: ...
def _run_cli(argv: list[str]) -> int: ...
def write_random_weight_model(path: str | os.PathLike[str]) -> Path:
    """Writes a tiny chat model with RANDOM weights (Qwen2 architecture, 2 layers, Q8_0,
    a byte-level tokenizer with the Qwen2.5 chat template) as a GGUF file at ``path``
    (which must end in .gguf) and returns the path. Its text is meaningless: it is for
    trying local-model agents without downloading a model. The weights are drawn from a
    fixed seed: every call writes the same model, so its greedy answers repeat."""
