"""Python functions as tools of the cluster's agents.

    import agentfleet as af

    fleet = af.init()

    @fleet.tool
    def add(a: int, b: int) -> int:
        "Adds two integers."
        return a + b

    calc = fleet.agent("calc", model="SmolLM2-135M-Instruct.Q4_1.gguf", tools=[add])

A tool's name is its function's (or ``name=``), its description the docstring's text before
an ``Args:`` section (or ``description=``), and its arguments' JSON schema comes from the
type hints: ``str``, ``int``, ``float``, ``bool``, ``list[...]``, ``dict[str, ...]``,
``Optional``/unions, ``Literal``, ``Enum``s, dataclasses and pydantic models; an argument's
description from an ``Args:`` line (``name: what it is``) or ``Annotated[type, "what"]``.
Agents list tools in ``tools=[...]`` beside the names of other agents.

The process that registered a tool runs it (``@fleet.tool`` on an embedded cluster or on a
connection to a running one): each call arrives with its arguments as JSON, which are
converted to the hinted types (a dataclass or pydantic model is built from its object), and
the function runs, a plain function on a thread of a pool, an ``async def`` on this
module's event loop. What it returns is the text the model reads next: a ``str`` as it is,
anything else as JSON. An exception becomes an error result the model reads
(``"ValueError: ..."``); the task goes on. A call that outlives the tool's ``timeout``
(seconds, 60 by default) ends with an error for the model; an ``async`` tool is cancelled
then, a plain function cannot be and runs to its end unheard.

Each call is a durable step of its task: its result is stored by the head before the
agent's model goes on, and a task retried after its worker died replays the recorded calls
instead of making them again. Only a call that was in flight when the worker died is made
again, unless its tool says ``idempotent=False`` (it sends, pays, books): then the retry
fails with an error naming the tool rather than risk running it twice. An agent may say the
same of any of its tools with ``fleet.agent(..., call_once=[...])``.

A parameter typed ``list[af.AgentFile]`` takes the files given with the calling task (A2A
file parts, ``submit(files=...)``) and is not shown to the model; an agent on a model with
such a tool takes files of any type (its model reads their names, types and sizes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import json
import re
import threading
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from agentfleet.agents import AgentFile

__all__ = ["Tool", "tool"]

#: Calls of plain functions that run at once in one process; more wait for a thread.
MAX_THREADS = 32


class Tool:
    """A Python function agents may call, with the JSON schema of its arguments."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        requires_approval: bool = False,
        idempotent: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a tool is made of a function, not {fn!r}")
        if isinstance(fn, Tool):
            fn = fn.fn
        self.fn: Callable[..., Any] = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        if not self.name or self.name == "<lambda>":
            raise ValueError("this function has no usable name: give the tool name=...")
        summary, arg_docs = _docstring(inspect.getdoc(fn) or "")
        self.description = description if description is not None else summary
        if timeout is not None and not (0 < timeout <= 3600):
            raise ValueError(f"timeout is in seconds, more than 0 and at most 3600: got {timeout!r}")
        self.timeout = timeout
        #: Every call waits for a person's approval (the task is input-required until then).
        self.requires_approval = bool(requires_approval)
        #: Calling it twice with the same arguments does no more than once: a task retried
        #: after its worker died calls it again when the first call's result was lost. When
        #: False, it is never called twice for one step: the retry fails instead, naming it.
        self.idempotent = bool(idempotent)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.parameters, self._convert, self.files_parameter = _signature_schema(fn, arg_docs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def definition(self) -> tuple[str, str, str, int, bool, bool, bool]:
        """(name, description, parameters as JSON, timeout in ms (0: the default), whether
        calls wait for approval, whether calls get the calling task's files, whether it is
        called at most once per step)."""
        timeout_ms = 0 if self.timeout is None else max(1, round(self.timeout * 1000))
        parameters = json.dumps(self.parameters)
        takes_files = self.files_parameter is not None
        return (
            self.name,
            self.description,
            parameters,
            timeout_ms,
            self.requires_approval,
            takes_files,
            not self.idempotent,
        )

    def arguments(self, arguments_json: str, files: "list[AgentFile] | None" = None) -> dict[str, Any]:
        """The call's JSON arguments as keyword arguments of the function, with the calling
        task's files for a parameter typed ``list[af.AgentFile]``."""
        arguments = json.loads(arguments_json) if arguments_json.strip() else {}
        if not isinstance(arguments, dict):
            raise TypeError(f"the arguments are a JSON object, not {arguments_json!r}")
        kwargs = {k: self._convert[k](v) if k in self._convert else v for k, v in arguments.items()}
        if self.files_parameter is not None:
            # The model cannot name or forge files: whatever it wrote there is replaced.
            kwargs[self.files_parameter] = list(files or [])
        return kwargs


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    requires_approval: bool = False,
    idempotent: bool = True,
) -> Any:
    """Makes a function a `Tool` (as ``@af.tool``, ``@af.tool(timeout=5)`` or
    ``@af.tool(requires_approval=True)``) without hosting it yet: an agent created with it in
    ``tools=[...]`` hosts it in this process. ``idempotent=False`` for a tool that must not
    run twice for one call (it sends, pays, books): see `Tool.idempotent`."""
    options: dict[str, Any] = dict(
        name=name,
        description=description,
        timeout=timeout,
        requires_approval=requires_approval,
        idempotent=idempotent,
    )
    if fn is None:
        return lambda f: Tool(f, **options)
    return Tool(fn, **options)


# ---- hosting --------------------------------------------------------------------------


class _Host:
    """Runs the calls the head sends this process for the tools it registered."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._tools: dict[str, Tool] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="agentfleet-tool")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._async_calls: dict[int, Any] = {}
        self._reader = threading.Thread(target=self._read, name="agentfleet-tools", daemon=True)
        self._reader.start()

    def add(self, tools: list[Tool]) -> None:
        with self._lock:
            known = {t.name: self._tools.get(t.name) for t in tools}
            for t in tools:
                self._tools[t.name] = t
        try:
            self._native.register([t.definition() for t in tools])
        except BaseException:
            with self._lock:
                for name, before in known.items():
                    if before is None:
                        self._tools.pop(name, None)
                    else:
                        self._tools[name] = before
            raise

    def close(self) -> None:
        self._native.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)

    def _read(self) -> None:
        while True:
            command = self._native.next()
            if command is None:
                return
            if not command:
                continue
            if command[0] == "canceled":
                future = self._async_calls.pop(command[1], None)
                if future is not None:
                    future.cancel()
                continue
            _, call, name, arguments, task_id, context_id, timeout, given = command
            files = [AgentFile(*f) for f in given]
            t = self._tools.get(name)
            if t is None:
                self._native.answer(call, f"this process does not host a tool named {name}", True)
            elif t.is_async:
                coro = self._run_async(t, call, arguments, timeout, files)
                self._async_calls[call] = asyncio.run_coroutine_threadsafe(coro, self._event_loop())
            else:
                self._pool.submit(self._run_sync, t, call, arguments, files)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_run_loop, args=(loop,), name="agentfleet-tools-async", daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _run_sync(self, t: Tool, call: int, arguments: str, files: list[AgentFile]) -> None:
        try:
            output, is_error = _result(t.fn(**t.arguments(arguments, files))), False
        except Exception as e:  # the model reads what went wrong
            output, is_error = _error(e), True
        self._native.answer(call, output, is_error)

    async def _run_async(self, t: Tool, call: int, arguments: str, timeout: float, files: list[AgentFile]) -> None:
        try:
            value = await asyncio.wait_for(t.fn(**t.arguments(arguments, files)), timeout)
            output, is_error = _result(value), False
        except asyncio.CancelledError:
            return  # the head no longer waits for it
        except asyncio.TimeoutError:
            output, is_error = f"tool {t.name} did not answer within {timeout:g} s", True
        except Exception as e:
            output, is_error = _error(e), True
        finally:
            self._async_calls.pop(call, None)
        self._native.answer(call, output, is_error)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Runs the host's event loop until `close` stops it; its coroutines are cancelled."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        for pending in asyncio.all_tasks(loop):
            pending.cancel()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


_hosts_lock = threading.Lock()


def _host(fleet: Any) -> _Host:
    with _hosts_lock:
        host = fleet.__dict__.get("_tool_host")
        if not isinstance(host, _Host):
            host = _Host(fleet._open_tool_host())
            fleet.__dict__["_tool_host"] = host
        return host


#: `Fleet.tool`'s options that leave an `af.tool` as it is.
_TOOL_DEFAULTS: dict[str, Any] = dict(
    name=None, description=None, timeout=None, requires_approval=False, idempotent=True
)


def _fleet_tool(fleet: Any, fn: Any = None, **options: Any) -> Any:
    """`Fleet.tool`: makes `fn` a tool hosted by this process, or a decorator that does."""

    def host(f: Any) -> Tool:
        if isinstance(f, Tool) and all(options.get(k) == v for k, v in _TOOL_DEFAULTS.items()):
            t = f
        else:
            t = Tool(f, **options)
        _host(fleet).add([t])
        return t

    return host if fn is None else host(fn)


def _hosted_name(fleet: Any, item: Any) -> str:
    """An entry of ``agent(tools=[...])`` that is not a name: hosted here, named."""
    t = item if isinstance(item, Tool) else Tool(item)
    host = _host(fleet)
    if host._tools.get(t.name) is not t:
        host.add([t])
    return t.name


def _close(fleet: Any) -> None:
    with _hosts_lock:
        host = fleet.__dict__.pop("_tool_host", None)
    if host is not None:
        host.close()


def _result(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):  # a pydantic model
        return str(value.model_dump_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        value = value.value
    return json.dumps(value, default=str)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---- schemas --------------------------------------------------------------------------

_ARGS = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_ARG = re.compile(r"^\s+(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The text before a Google-style ``Args:`` section, and each argument's line there."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if _ARGS.match(line):
            args: dict[str, str] = {}
            current = None
            for arg_line in lines[i + 1 :]:
                if arg_line.strip() and not arg_line.startswith((" ", "\t")):
                    break  # the next section
                m = _ARG.match(arg_line)
                if m:
                    current = m.group(1).lstrip("*")
                    args[current] = m.group(3).strip()
                elif current and arg_line.strip():
                    args[current] += " " + arg_line.strip()
            return "\n".join(lines[:i]).strip(), args
    return doc.strip(), {}


def _signature_schema(
    fn: Callable[..., Any], docs: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Callable[[Any], Any]], str | None]:
    """The JSON schema of `fn`'s arguments, converters of those that need one, and the
    parameter that takes the calling task's files (typed ``list[af.AgentFile]``), which the
    model does not see."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    convert: dict[str, Callable[[Any], Any]] = {}
    files_parameter: str | None = None
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue  # extra arguments are not offered to the model
        if p.kind == p.POSITIONAL_ONLY:
            raise TypeError(f"{fn.__name__}: argument {p.name} is positional-only; a tool's arguments are passed by name")
        hint = hints.get(p.name, inspect.Parameter.empty)
        if _is_file_list(hint):
            if files_parameter is not None:
                raise TypeError(f"{fn.__name__}: {files_parameter} and {p.name} both take the task's files; keep one")
            files_parameter = p.name
            continue
        schema: dict[str, Any] = {} if hint is inspect.Parameter.empty else _schema(hint)
        if p.name in docs and "description" not in schema:
            schema["description"] = docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif _jsonable(p.default):
            schema["default"] = p.default
        properties[p.name] = schema
        converter = _converter(hint)
        if converter is not None:
            convert[p.name] = converter
    arguments: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        arguments["required"] = required
    return arguments, convert, files_parameter


def _is_file_list(hint: Any) -> bool:
    """Whether a parameter typed `hint` takes the calling task's files."""
    args = typing.get_args(hint)
    return typing.get_origin(hint) in (list, typing.List) and len(args) == 1 and args[0] is AgentFile


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _is_pydantic(t: Any) -> bool:
    return isinstance(t, type) and hasattr(t, "model_json_schema") and hasattr(t, "model_validate")


def _schema(t: Any) -> dict[str, Any]:
    """The JSON schema of a type hint."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        schema = _schema(args[0])
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
        return schema
    if t is Any or t is inspect.Parameter.empty:
        return {}
    if t is type(None) or t is None:
        return {"type": "null"}
    if t is str:
        return {"type": "string"}
    if t is bool:
        return {"type": "boolean"}
    if t is int:
        return {"type": "integer"}
    if t is float:
        return {"type": "number"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [_schema(a) for a in args]}
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return {"enum": [m.value for m in t]}
    if _is_pydantic(t):
        return dict(t.model_json_schema())
    if dataclasses.is_dataclass(t) and isinstance(t, type):
        hints = typing.get_type_hints(t, include_extras=True)
        fields = dataclasses.fields(t)
        shape: dict[str, Any] = {"type": "object", "properties": {f.name: _schema(hints.get(f.name, Any)) for f in fields}}
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if required:
            shape["required"] = required
        return shape
    if t in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset, typing.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [_schema(a) for a in args], "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _schema(args[0])} if args else {"type": "array"}
    if t is dict or origin is dict or origin is typing.Mapping:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": _schema(args[1])}
        return {"type": "object"}
    raise TypeError(f"no JSON schema for type {t!r}: use str, int, float, bool, lists, dicts, Literal, enums, dataclasses or pydantic models")


def _converter(t: Any) -> Callable[[Any], Any] | None:
    """How a JSON value becomes an argument of hinted type `t` (None: as it is)."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return _converter(args[0])
    if _is_pydantic(t):
        validate: Callable[[Any], Any] = t.model_validate
        return validate
    if dataclasses.is_dataclass(t) and isinstance(t, type):
        return lambda v: t(**v) if isinstance(v, dict) else v
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return t
    if t is float:
        return lambda v: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in args if a is not type(None)]
        optional = _converter(inner[0]) if len(inner) == 1 else None
        if optional is not None:
            return lambda v: None if v is None else optional(v)
    if origin in (list, set, frozenset) and args:
        item = _converter(args[0])
        if item is not None:
            return lambda v: origin(item(x) for x in v) if isinstance(v, list) else v
    if t in (tuple,) or origin is tuple:
        return lambda v: tuple(v) if isinstance(v, list) else v
    return None
