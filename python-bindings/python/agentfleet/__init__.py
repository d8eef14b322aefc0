"""agentfleet: submit parallel agent jobs to an agentfleet cluster from Python.

    import agentfleet as af

    fleet = af.init()                                   # embedded head + 2 local workers
    echo = fleet.agent("echo", "builtin:echo")          # registers; fleet.get_agent looks up
    print(echo.map(["hello", "world"]))                 # parallel, results in order
    for event in echo.stream("one two three"):          # events as they arrive
        if isinstance(event, af.TextDelta):             # one class per kind of event
            print(event.text)

Options are grouped: ``sampling=af.Sampling(temperature=0.2, max_tokens=64)`` and
``resources=af.Resources(num_cpus=1, memory=2 * 1024**3)`` when registering, and
``agent.options(sampling=...)`` for a variant per call. ``task = await agent.asubmit(...)``
gives a Task as ``submit`` does; ``await task`` its answer. A failure raises the class of
its kind (``af.BusyError``, ``af.InvalidRequestError``, ``af.CanceledError``, ...; all
``af.FleetError``).

Local models: ``af.init(models_dir="~/models", preload=["all-MiniLM-L6-v2"])`` makes the
embedded workers serve the GGUF files and Hugging Face folders in that folder; an agent on
an embedding model embeds (``agent.embed(texts)``, ``agent.map_embed(texts)``), one on a
chat model generates. ``af.write_random_weight_model(path)`` writes a tiny random-weight
GGUF for trying this without a download (its text is meaningless).

Python functions as tools: ``@fleet.tool`` (or ``af.tool``, hosted once an agent lists it)
makes a function a tool this process runs when the cluster's agents call it
(``fleet.agent(name, model, tools=[add])``); see ``agentfleet.tools``.

Agents written with pydantic-ai, LangGraph or the OpenAI Agents SDK run as Python agents:
``fleet.agent(af.from_pydantic_ai(agent, model=...))``, ``af.from_langgraph(graph)``,
``af.from_openai_agents(agent)``; their model calls go to the workers' models through
``af.openai_client()``. See ``agentfleet.adapters``.

Agents written in Python: ``@af.agent`` on a class with ``run(self, task, ctx)`` or an async
generator function ``(task, ctx)`` that yields text, then ``fleet.agent(MyAgent)``; the code
may chat with the workers' models, call other agents and tools, and keep state between
tasks. Embedded workers host them; on a running cluster, ``python -m agentfleet worker
--head URL --import mypkg.agents`` does. See ``agentfleet.agents``.

`af.init("http://head:7070", token=...)` connects to a running cluster instead.
"""

import os
from typing import Any

from agentfleet._native import (
    Agent,
    ArtifactEvent,
    AsyncEventIterator,
    BusyError,
    Canceled,
    CanceledError,
    Completed,
    ContentTypeNotSupportedError,
    Embeddings,
    Event,
    EventIterator,
    Failed,
    Fleet,
    FleetError,
    InputReceived,
    InputRequired,
    InternalError,
    InvalidRequestError,
    NotCancelableError,
    PermissionDeniedError,
    ReasoningDelta,
    Retrying,
    Scheduled,
    StateSaved,
    Submitted,
    Task,
    TextDelta,
    ToolCall,
    ToolResult,
    TopicFollower,
    TopicMessage,
    UnauthenticatedError,
    UnavailableError,
    UnknownAgentError,
    UnknownTaskError,
    UnsupportedError,
    Working,
    __version__,
    write_random_weight_model,
)
from agentfleet._native import _init
from agentfleet.agents import AgentContext, AgentFile, AgentTask, Artifact, agent
from agentfleet.kinds import ErrorKind, EventKind, TaskState
from agentfleet.options import Resources, Sampling
from agentfleet.tools import Tool, tool
from agentfleet.adapters import from_langgraph, from_openai_agents, from_pydantic_ai, openai_client

__all__ = [
    "Agent",
    "AgentContext",
    "AgentFile",
    "AgentTask",
    "Artifact",
    "ArtifactEvent",
    "AsyncEventIterator",
    "BusyError",
    "Canceled",
    "CanceledError",
    "Completed",
    "ContentTypeNotSupportedError",
    "Embeddings",
    "ErrorKind",
    "Event",
    "EventIterator",
    "EventKind",
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
    "Resources",
    "Retrying",
    "Sampling",
    "Scheduled",
    "StateSaved",
    "Submitted",
    "Task",
    "TaskState",
    "TextDelta",
    "Tool",
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
    "__version__",
    "agent",
    "from_langgraph",
    "from_openai_agents",
    "from_pydantic_ai",
    "init",
    "openai_client",
    "tool",
    "write_random_weight_model",
]

#: Names the tidy of 0.1 replaced, and what to use instead; kept one release so that old
#: code fails saying what to write.
_RENAMED = {
    "TaskFailed": "the class of the failure's kind (af.BusyError, af.InvalidRequestError, "
    "af.UnavailableError, ...; catch af.FleetError for any; its .kind names the kind)",
    "Cancelled": "af.CanceledError",
    "NotFound": "af.UnknownAgentError or af.UnknownTaskError",
    "InvalidArgument": "af.InvalidRequestError",
    "ResourceExhausted": "af.BusyError",
    "FailedPrecondition": "af.UnsupportedError or af.NotCancelableError",
    "Unavailable": "af.UnavailableError",
    "Unauthenticated": "af.UnauthenticatedError",
    "PermissionDenied": "af.PermissionDeniedError",
}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        message = f"agentfleet.{name} is gone since 0.1: use {_RENAMED[name]}"
        # `from agentfleet import TaskFailed` turns this AttributeError into an ImportError
        # of its own, without the message: the warning says it first.
        import warnings

        warnings.warn(message, FutureWarning, stacklevel=2)
        raise AttributeError(message)
    raise AttributeError(f"module 'agentfleet' has no attribute {name!r}")


def init(
    address: "str | list[str] | None" = None,
    *,
    workers: int = 2,
    models_dir: "str | os.PathLike[str] | None" = None,
    preload: "list[str] | None" = None,
    device: "str | None" = None,
    token: "str | None" = None,
    tls_ca: "str | os.PathLike[str] | None" = None,
    data_dir: "str | os.PathLike[str] | None" = None,
    otlp_endpoint: "str | None" = None,
    allow_mcp_commands: "list[str] | None" = None,
    allow_mcp_urls: "list[str] | None" = None,
) -> Fleet:
    """Start an embedded cluster (no ``address``) or connect to a running one.

    The embedded cluster (a head and ``workers`` local workers inside this process) stops
    at interpreter exit or on ``fleet.shutdown()``. Its workers serve the models in
    ``models_dir`` (GGUF files and Hugging Face folders; a model's id is its file or folder
    name), load the ids in ``preload`` before ``init`` returns, and run them on ``device``
    (``cpu`` by default; ``cuda:N``/``metal:N`` in builds with those features). ``token``
    is the client token; it defaults to $FLEET_TOKEN. The embedded head also listens on
    127.0.0.1 for other processes and always requires a client token there: without one
    given it makes a random one, readable as ``fleet.token``. For an ``https://`` address,
    ``tls_ca`` (default $FLEET_TLS_CA) is a PEM file of the CA certificates to trust instead
    of the system's. The embedded head keeps its tasks and agents in a store under
    ``data_dir``; start it again on the same folder and it has them back (finished tasks
    readable, unfinished ones run again). Without ``data_dir`` it keeps them in memory only
    (within its retention), gone at shutdown. With ``otlp_endpoint`` (default
    $OTEL_EXPORTER_OTLP_ENDPOINT), an OTLP/HTTP collector such as ``http://127.0.0.1:4318``,
    the embedded cluster exports OpenTelemetry traces there: one per task, GenAI spans
    (``invoke_agent``, ``chat``, ``embeddings``, ``execute_tool``); ``fleet.shutdown()``
    sends those still queued. The embedded workers run the MCP server programs named in
    ``allow_mcp_commands`` (as agents' commands name them; ``"*"``: any) and reach MCP
    servers whose URLs start with one of ``allow_mcp_urls``; none by default.

    ``address`` may list several heads (a leader and its standbys on a shared PostgreSQL
    store), as a list or one string with commas: calls go to the head that leads, and tasks
    and ``map`` ride through a failover to the next one.
    """
    import atexit

    if isinstance(address, (list, tuple)):
        if not address or not all(isinstance(a, str) and a.strip() for a in address):
            raise ValueError(
                f"address: give a URL or a non-empty list of URLs, not {address!r}"
            )
        address = ",".join(a.strip() for a in address)

    options = {
        "workers": workers,
        "models_dir": models_dir,
        "preload": preload,
        "device": device,
        "token": token,
        "tls_ca": tls_ca,
        "data_dir": data_dir,
        "otlp_endpoint": otlp_endpoint,
        "allow_mcp_commands": allow_mcp_commands,
        "allow_mcp_urls": allow_mcp_urls,
    }
    fleet = _init(address, options)
    if fleet.embedded:
        from agentfleet import agents

        agents._serve(fleet)
        atexit.register(fleet.shutdown)
    return fleet

