"""Agents written in Python, run on the cluster like any agent.

    import agentfleet as af

    @af.agent
    class Counter:
        "Counts the turns of each conversation and has a model answer them."

        def __init__(self) -> None:
            self.turns = 0

        async def run(self, task: af.AgentTask, ctx: af.AgentContext):
            self.turns += 1
            answer = await ctx.chat(model="SmolLM2-135M-Instruct.Q4_1.gguf", messages=task.input)
            yield f"turn {self.turns}: {answer}"

    fleet = af.init()
    counter = fleet.agent(Counter)          # the agent "Counter", model "python:Counter"
    print(counter.submit("hello").result())

``@af.agent`` takes a class with a ``run(self, task, ctx)`` method, or a function
``(task, ctx)``: an async generator (each ``yield`` streams text), a coroutine (its return
value is the answer), or a plain function or generator (run on a thread; it cannot await
the context). ``name=`` names it (default: the class's or function's name), ``description=``
describes it (default: the docstring's first paragraph).

A class keeps state between tasks: one instance per agent in each process that hosts it,
or with ``per_context=True`` one per conversation (``context_id``; the least recently used
are dropped past ``MAX_CONTEXTS`` per agent). The cluster keeps a conversation on one
worker while it can, so its instance sees every turn; a worker lost takes its instances
with it. Async tasks run concurrently on one event loop: an instance's state is shared by
its concurrent tasks (no locks needed between awaits); a plain ``run`` runs on threads, so
guard its state with a lock.

State that outlives a worker is the cluster's to keep: with ``state=True`` the agent is a
virtual actor (as Dapr's are). ``ctx.state`` is a dict, JSON-serializable, that the head
stores: one per agent, or with ``per_context=True`` one per conversation. It is loaded before
``run`` and stored when the task completes (unchanged: not stored again), or earlier with
``await ctx.save()``; a task that fails keeps what it saved. One task per key runs at a time
across the cluster: a second task of the same conversation waits for the first, on any
worker. After a worker or the head dies, the key's next task runs with the last stored
state::

    @af.agent(state=True, per_context=True)
    async def counter(task, ctx):
        ctx.state["turns"] = ctx.state.get("turns", 0) + 1
        return f"turn {ctx.state['turns']}"

A state holds at most 256 KiB of JSON (more fails the task); a per-context agent's task
without a ``context_id`` starts from an empty state that is not stored. Deleting a context
(``fleet.delete_context``) deletes its states too.

The context (`AgentContext`) streams nothing itself; it lets the code ask the cluster:
``await ctx.chat(model=..., messages=...)`` (a model of the worker, local or ``openai:``),
``await ctx.call(agent, text)`` (another agent, as a sub-task) or ``await ctx.call(tool,
**arguments)`` (one of the agent's tools: Python tools, MCP tools), ``await
ctx.publish(topic, message)`` (one of the agent's topics), ``await ctx.ask(question)`` (the
task's user, with ``ask_user=True``). Calls and their results show in
the task's events, as a model's tool calls do. ``ctx.artifact(content, name=...)`` returns a
file (``bytes``, ``af.AgentFile``) or JSON data beside the text: A2A clients get it as an
artifact of its own, Python clients as ``task.artifacts()``.

Where they run: an embedded cluster's workers (``af.init()``) host every Python agent of
the process; on a running cluster, Python workers host those of the modules they import
(``python -m agentfleet worker --head URL --import mypkg.agents``), and the head places
their tasks only there. An exception fails the task with ``"TypeName: message"``; a
worker lost mid-task means the task runs again elsewhere, like any agent's. The code runs
again from the start, and a call that repeats one of the lost attempt's (the same tool or
agent with the same arguments) is answered from its record: a finished call, question or
publication is not made twice (``task.attempt`` says which
attempt runs). A call that was in flight when the worker died is made again, unless its
tool is ``idempotent=False`` (or in the agent's ``call_once``): then the task fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import threading
from typing import Any, AsyncIterator, Callable, TypeVar, overload

from agentfleet._native import FleetError, UnavailableError, _AgentHost

__all__ = ["AgentContext", "AgentFile", "AgentTask", "agent", "MAX_CONTEXTS"]

#: The most per-conversation instances one agent keeps in one process: as many as the head
#: keeps actors' states for a tenant, so one worker can hold every actor of a tenant (an
#: idle instance of a small class costs ~270 bytes: benches/python/actors_at_scale.py).
MAX_CONTEXTS = 100_000

_log = logging.getLogger("agentfleet.agents")

#: The context of the task whose code runs (an asyncio task's copy of the context, and the
#: threads it starts, see it): how ``af.openai_client()`` finds the task it answers for.
current: "contextvars.ContextVar[AgentContext]" = contextvars.ContextVar("agentfleet_task")

T = TypeVar("T")


class AgentFile:
    """A file given with a task (an A2A file part), or one an agent returns
    (``ctx.artifact(af.AgentFile(...))``): its bytes, or the URL where it is."""

    __slots__ = ("name", "media_type", "data", "url")

    def __init__(
        self, name: str = "", media_type: str = "application/octet-stream", data: bytes = b"", url: str = ""
    ) -> None:
        self.name = name
        self.media_type = media_type
        #: The file's bytes (empty when it came as a URL).
        self.data = data
        #: Where the file is, when it came as a URL instead of bytes ("" otherwise).
        self.url = url

    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self.url else f"{len(self.data)} bytes"
        return f"AgentFile(name={self.name!r}, media_type={self.media_type!r}, {where})"


class Artifact:
    """A file or JSON data a task returned beside its text (an A2A artifact): ``file`` is set
    for a file, else ``data`` holds the JSON value."""

    __slots__ = ("id", "name", "description", "file", "data")

    def __init__(self, id: str, name: str, description: str, file: "AgentFile | None", data: Any) -> None:
        #: Names it within its task (``artifact-1``, ``artifact-2``, ... unless the agent named it).
        self.id = id
        self.name = name
        self.description = description
        self.file = file
        self.data = data

    def __repr__(self) -> str:
        what = repr(self.file) if self.file is not None else f"data={self.data!r}"
        return f"Artifact(id={self.id!r}, name={self.name!r}, {what})"


class AgentTask:
    """One task of a Python agent, as its code sees it."""

    __slots__ = (
        "id",
        "agent",
        "input",
        "context_id",
        "tenant",
        "_conversation",
        "attempt",
        "history",
        "instructions",
        "files",
    )

    def __init__(
        self,
        id: str,
        agent: str,
        input: str,
        context_id: str,
        attempt: int,
        history: list[dict[str, str]],
        instructions: str,
        files: "list[AgentFile] | None" = None,
    ) -> None:
        self.id = id
        #: The agent it was sent to (one Python agent may serve several cluster agents).
        self.agent = agent
        self.input = input
        # The worker names a conversation outside the default tenant "TENANT\x1fCONTEXT" (two
        # tenants may pick one context id): the code sees the client's id and the tenant, and
        # per-context instances are kept by the whole name, so tenants never share one.
        tenant, _, client_context = context_id.rpartition("\x1f")
        #: The conversation's id as the client gave it ("" when none).
        self.context_id = client_context
        #: The tenant whose task it is ("" for the default tenant).
        self.tenant = tenant
        self._conversation = context_id
        #: 1 for the first run; more when a lost worker's task runs again.
        self.attempt = attempt
        #: The conversation before it: ``[{"role": ..., "content": ...}, ...]``.
        self.history = history
        #: The agent's instructions as registered.
        self.instructions = instructions
        #: Files given with the task (A2A file parts), in order.
        self.files: list[AgentFile] = files or []

    def __repr__(self) -> str:
        return f"AgentTask(id={self.id!r}, agent={self.agent!r}, input={self.input!r})"


class AgentContext:
    """What a Python agent's task may ask of the cluster while it runs."""

    __slots__ = ("_native", "_run", "task_id", "agent", "context_id", "_state", "_saved", "_keeps", "_unkeyed")

    def __init__(
        self, native: Any, run: int, task: AgentTask, keeps: bool = False, stored: "str | None" = None, per_context: bool = False
    ) -> None:
        self._native = native
        self._run = run
        self.task_id = task.id
        self.agent = task.agent
        self.context_id = task.context_id
        #: Whether the agent keeps state (``state=True``).
        self._keeps = keeps
        #: The state as stored (JSON; None: the task's state is not stored), and as the code has it.
        self._saved = stored
        self._state: "dict[str, Any] | None" = None
        #: A per-context agent's task without a context: its state starts empty, unstored.
        self._unkeyed = per_context and not task._conversation

    @property
    def state(self) -> "dict[str, Any]":
        """The actor's state (``@af.agent(state=True)``): a dict of JSON values the head
        keeps for the agent's (or, with ``per_context=True``, the conversation's) next task.
        Stored when the task completes, or with ``await ctx.save()``."""
        if not self._keeps:
            raise FleetError(
                f"agent {self.agent} keeps no state: declare it with @af.agent(state=True) "
                "(per_context=True for one per conversation)"
            )
        if self._saved is None and not self._unkeyed:
            raise FleetError(
                f"agent {self.agent} was registered without its state: register the decorated "
                "class or function itself (fleet.agent(TheAgent)), not its name"
            )
        if self._state is None:
            import json

            loaded = json.loads(self._saved) if self._saved else {}
            self._state = loaded if isinstance(loaded, dict) else {}
        return self._state

    @state.setter
    def state(self, value: "dict[str, Any]") -> None:
        if not isinstance(value, dict):
            raise TypeError(f"ctx.state is a dict, not {type(value).__name__}")
        self.state  # the agent keeps state, or this raises
        self._state = value

    def _changed(self) -> "str | None":
        """The state as JSON when it is stored and the code changed it since."""
        if self._state is None or self._saved is None:
            return None
        import json

        try:
            text = json.dumps(self._state, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise type(e)(f"ctx.state holds what JSON cannot: {e}") from e
        return None if text == self._saved else text

    async def save(self) -> None:
        """Stores ``ctx.state`` now; returns once the head has it (a crash after this keeps
        it). A task without a stored state (a per-context agent's task without a
        ``context_id``) stores nothing. Raises ``TypeError``/``ValueError`` for a state that
        is no JSON, ``InvalidRequestError`` for one over 256 KiB."""
        self.state  # the agent keeps state, or this raises
        text = self._changed()
        if text is None:
            return
        await self._native.save(self._run, text)
        self._saved = text

    async def chat(
        self,
        messages: "str | list[dict[str, str]] | list[tuple[str, str]]",
        *,
        model: str,
        max_tokens: "int | None" = None,
        temperature: "float | None" = None,
        top_p: "float | None" = None,
        seed: "int | None" = None,
        stop: "list[str] | None" = None,
    ) -> str:
        """Model ``model``'s answer to ``messages`` (a user message as ``str``, or chat
        messages as ``{"role", "content"}`` dicts or pairs). The model is one this worker
        serves (a file of its models dir, ``builtin:...``, ``openai:...``), loaded on first
        use. Raises ``InvalidRequestError`` for a request the model refuses,
        ``UnavailableError`` when it cannot be loaded (the class of the failure's kind)."""
        pairs = _messages(messages)
        return str(
            await self._native.chat(
                self._run, model, pairs, max_tokens, temperature, top_p, seed, list(stop or [])
            )
        )

    async def call(self, name: str, input: "str | dict[str, Any] | None" = None, **arguments: Any) -> str:
        """Calls another agent (``ctx.call("summarizer", text)``) or one of this agent's tools
        (``ctx.call("add", a=1, b=2)``, or a dict of arguments); returns its answer. Raises
        ``FleetError`` with the answer when the call failed (the agent's task failed, the tool
        raised)."""
        import json

        if isinstance(input, str):
            if arguments:
                raise TypeError("give an agent its input, or a tool its arguments, not both")
            payload: Any = {"input": input}
        elif isinstance(input, dict):
            payload = {**input, **arguments}
        elif input is None:
            payload = arguments
        else:
            raise TypeError(f"input is a str (an agent's) or a dict (a tool's arguments), not {type(input).__name__}")
        output, is_error = await self._native.call(self._run, name, json.dumps(payload))
        if is_error:
            raise FleetError(f"{name}: {output}")
        return str(output)

    async def ask(self, question: str) -> str:
        """Asks the task's user ``question`` and returns the reply; the agent is registered
        with ``ask_user=True``. The task is input-required until the user replies (A2A: a
        message with the task's id; Python: ``task.reply(text)``). Raises ``FleetError`` when
        the user declines, nobody can reply (another agent called this one), or the agent's
        ``input_timeout`` passes (the task then fails, whatever the code does next)."""
        return await self.call("ask_user", {"question": question})

    def artifact(
        self, content: Any, *, name: str = "", description: str = "", media_type: str = ""
    ) -> None:
        """Returns a file or data beside the task's text (an A2A artifact of its own; Python
        clients read them with ``task.artifacts()``). ``content`` is an ``AgentFile``,
        ``bytes`` (a file of ``media_type``, default ``application/octet-stream``), ``str``
        (a text file, ``text/plain``), or any JSON value (a dict, a list, a pydantic model):
        data. At most 8 MiB each; what a task streams in all (text and artifacts) is at most
        16 MiB. Raises ``InvalidRequestError`` for content too big, ``TypeError``/``ValueError``
        for content that is no JSON."""
        import json

        if isinstance(content, AgentFile):
            sent = self._native.artifact(
                self._run,
                name or content.name,
                description,
                media_type or content.media_type,
                bytes(content.data),
                content.url,
                None,
            )
        elif isinstance(content, (bytes, bytearray, memoryview)):
            sent = self._native.artifact(
                self._run, name, description, media_type or "application/octet-stream", bytes(content), "", None
            )
        elif isinstance(content, str):
            data = content.encode()
            sent = self._native.artifact(
                self._run, name, description, media_type or "text/plain; charset=utf-8", data, "", None
            )
        else:
            dump = getattr(content, "model_dump", None)
            value = dump(mode="json") if callable(dump) else content
            text = json.dumps(value, allow_nan=False)
            sent = self._native.artifact(self._run, name, description, "", None, "", text)
        if not sent:
            raise UnavailableError("this task has ended (canceled or failed)")

    def tool_started(self, name: str, arguments: "str | dict[str, Any]") -> str:
        """Shows that the code runs tool ``name`` itself (a framework's tool, in this
        process) with ``arguments`` (JSON text, or a dict): the task's events get the call,
        as for a model's call. Returns the call's id for ``tool_ended``. Unlike ``call``, a
        retried task's code runs such a tool again (the cluster does not run it)."""
        import json

        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return str(self._native.tool_started(self._run, name, text))

    def tool_ended(self, call_id: str, output: Any, is_error: bool = False) -> None:
        """The tool started with ``tool_started`` answered ``output`` (text; anything else as
        JSON), an error with ``is_error``: the task's events get the result."""
        import json

        text = output if isinstance(output, str) else json.dumps(output, default=str)
        self._native.tool_ended(self._run, call_id, text, is_error)

    @overload
    async def publish(self, topic: str, message: str) -> int: ...
    @overload
    async def publish(self, topic: str, message: "list[str]") -> "list[int]": ...
    async def publish(self, topic: str, message: "str | list[str]") -> "int | list[int]":
        """Posts ``message`` on ``topic``, one of the agent's topics (``topics=[...]``);
        returns its offset in the topic's log once the head has stored it. A list of
        messages is one step, stored in one write: their offsets come back."""
        many = not isinstance(message, str)
        messages = list(message) if many else [message]
        if not messages or not all(isinstance(m, str) for m in messages):
            raise TypeError("ctx.publish takes a str or a non-empty list of str")
        output, is_error = await self._native.publish(self._run, topic, messages)
        if is_error:
            raise FleetError(str(output))
        # "published on TOPIC at offset N" or "... at offsets N to M" (recorded as a tool
        # step: a retried task gets the same answer without publishing again).
        words = str(output).split()
        first = int(words[-1]) if len(messages) == 1 else int(words[-3])
        offsets = list(range(first, first + len(messages)))
        return offsets if many else offsets[0]


class _Code:
    """A Python agent: its name, description and code."""

    def __init__(self, target: Any, name: "str | None", description: "str | None", per_context: bool, state: bool = False) -> None:
        self.target = target
        self.name: str = name or str(getattr(target, "__name__", ""))
        if not self.name or self.name == "<lambda>":
            raise ValueError("this agent has no usable name: give it name=...")
        doc = inspect.getdoc(target) or ""
        self.description = description if description is not None else doc.split("\n\n")[0].strip()
        self.is_class = inspect.isclass(target)
        run = getattr(target, "run", None) if self.is_class else target
        if not callable(run):
            raise TypeError(f"a Python agent is a class with run(self, task, ctx), or a function (task, ctx): {target!r} has no run")
        self.run: Callable[..., Any] = run
        if per_context and not self.is_class and not state:
            raise TypeError(
                "per_context=True keeps one instance per conversation, for classes; a function "
                "keeps one stored state per conversation with state=True"
            )
        self.per_context = per_context
        #: Whether ``ctx.state`` is stored by the head (a virtual actor).
        self.state = state


def agent(
    target: Any = None,
    *,
    name: "str | None" = None,
    description: "str | None" = None,
    per_context: bool = False,
    state: bool = False,
) -> Any:
    """Makes a class or function a Python agent (``@af.agent``, ``@af.agent(name=...)``); it
    is returned as it was, marked. Defining it makes it known to this process: embedded
    workers and ``python -m agentfleet worker --import`` host it; ``fleet.agent(it)``
    registers it with a cluster. ``state=True`` gives it ``ctx.state``, stored by the head
    per agent (per conversation with ``per_context=True``), one task per key at a time."""

    def mark(t: T) -> T:
        code = _Code(t, name, description, per_context, state)
        with _lock:
            _defined[code.name] = code
        try:
            setattr(t, "__agentfleet_agent__", code)
        except (AttributeError, TypeError):
            pass  # a builtin or slotted object: known by its name all the same
        return t

    return mark if target is None else mark(target)


_lock = threading.Lock()
#: The Python agents this process defines, by name.
_defined: dict[str, _Code] = {}


def _definition(target: Any) -> tuple[str, str, str]:
    """``fleet.agent(target)``: (name, description, what its state is kept per: "", "agent"
    or "context") of a Python agent, defining it first if it is an unmarked class or
    function."""
    code = getattr(target, "__agentfleet_agent__", None)
    if not isinstance(code, _Code):
        if not (inspect.isclass(target) or callable(target)):
            raise TypeError(f"an agent is a name (str) or a Python agent (@af.agent), not {target!r}")
        agent(target)
        code = target.__agentfleet_agent__
    scope = ("context" if code.per_context else "agent") if code.state else ""
    return code.name, code.description, scope


def _names() -> list[str]:
    with _lock:
        return sorted(_defined)


def _messages(messages: Any) -> list[tuple[str, str]]:
    if isinstance(messages, str):
        return [("user", messages)]
    pairs = []
    for m in messages:
        if isinstance(m, dict):
            pairs.append((str(m.get("role", "user")), str(m.get("content", ""))))
        else:
            role, content = m
            pairs.append((str(role), str(content)))
    return pairs


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


# ---- hosting --------------------------------------------------------------------------


class _Runtime:
    """Runs the tasks the worker hands this process: a reader thread takes them in batches
    and starts each as a coroutine on an event loop of its own."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._loop = asyncio.new_event_loop()
        self._runs: dict[int, asyncio.Task[None]] = {}
        #: Runs the worker canceled (a CancelledError of the code's own is a failure).
        self._canceled: set[int] = set()
        self._instances: dict[str, Any] = {}
        self._contexts: dict[str, collections.OrderedDict[str, Any]] = {}
        self._loop_thread = threading.Thread(target=self._serve_loop, name="agentfleet-agents", daemon=True)
        self._loop_thread.start()
        self._reader = threading.Thread(target=self._read, name="agentfleet-agents-reader", daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._native.close()
        if not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:
                pass  # closed meanwhile
        self._loop_thread.join(timeout=5)

    def _serve_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            # Runs open and to come fail rather than wait for a loop that is gone.
            self._native.close()
            for pending in asyncio.all_tasks(self._loop):
                pending.cancel()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _read(self) -> None:
        while True:
            batch = self._native.next_batch()
            if batch is None:
                return
            try:
                self._loop.call_soon_threadsafe(self._start, batch)
            except RuntimeError:
                self._native.close()  # the loop is gone: fail what waits
                return

    def _start(self, batch: list[tuple[Any, ...]]) -> None:
        for command in batch:
            if command[0] == "cancel":
                running = self._runs.pop(command[1], None)
                if running is not None:
                    self._canceled.add(command[1])
                    running.cancel()
                continue
            _, run, program, agent_name, task_id, context_id, attempt, input, history, instructions, files, state = command
            task = AgentTask(
                task_id,
                agent_name,
                input,
                context_id,
                attempt,
                [{"role": r, "content": c} for r, c in history],
                instructions,
                [AgentFile(*f) for f in files],
            )
            self._runs[run] = self._loop.create_task(self._run(run, program, task, state))

    async def _run(self, run: int, program: str, task: AgentTask, state: "str | None") -> None:
        native = self._native
        try:
            with _lock:
                code = _defined.get(program)
            if code is None:
                known = ", ".join(_names()) or "none"
                raise LookupError(f"this process defines no Python agent named {program!r} (it defines: {known})")
            ctx = AgentContext(native, run, task, code.state, state, code.per_context)
            current.set(ctx)  # this run's own asyncio task: no reset needed
            if code.is_class:
                fn: Callable[..., Any] = getattr(self._instance(code, task), "run")
            else:
                fn = code.run
            if inspect.isasyncgenfunction(fn):
                pieces: AsyncIterator[Any] = fn(task, ctx)
                async for piece in pieces:
                    native.text(run, _text(piece))
            elif inspect.iscoroutinefunction(fn):
                value = await fn(task, ctx)
                if value is not None:
                    native.text(run, _text(value))
            elif inspect.isgeneratorfunction(fn):
                await asyncio.to_thread(_drain, native, run, fn, task, ctx)
            else:
                value = await asyncio.to_thread(fn, task, ctx)
                if value is not None:
                    native.text(run, _text(value))
            # Stored with the task's end (before its completion), when the code changed it.
            changed = ctx._changed()
        except asyncio.CancelledError as e:
            if run in self._canceled:
                return  # the worker canceled it; nobody waits for an answer
            native.finish(run, f"CancelledError: the agent's code was canceled {e}".rstrip())
            return
        except BaseException as e:
            # SystemExit and KeyboardInterrupt too: they end this task, not the host.
            _log.warning("Python agent %s failed on task %s", program, task.id, exc_info=True)
            native.finish(run, f"{type(e).__name__}: {e}")
            return
        finally:
            self._runs.pop(run, None)
            self._canceled.discard(run)
        native.finish(run, None, changed)

    def _instance(self, code: _Code, task: AgentTask) -> Any:
        """The agent's instance for this task: one per agent, or per conversation."""
        if not code.per_context:
            instance = self._instances.get(task.agent)
            if instance is None or type(instance) is not code.target:
                instance = self._instances[task.agent] = code.target()
            return instance
        contexts = self._contexts.setdefault(task.agent, collections.OrderedDict())
        key = task._conversation or task.id
        instance = contexts.get(key)
        if instance is None or type(instance) is not code.target:
            instance = contexts[key] = code.target()
            while len(contexts) > MAX_CONTEXTS:
                contexts.popitem(last=False)
        else:
            contexts.move_to_end(key)
        return instance


def _drain(native: Any, run: int, fn: Callable[..., Any], task: AgentTask, ctx: AgentContext) -> None:
    pieces = fn(task, ctx)
    try:
        for piece in pieces:
            if not native.text(run, _text(piece)):
                return  # the task ended (canceled): the generator stops here
    finally:
        pieces.close()


_runtimes_lock = threading.Lock()
#: The runtime of a Python worker process (`python -m agentfleet worker --import`).
_worker_runtime: "_Runtime | None" = None


def _serve(fleet: Any) -> None:
    """`init()` of an embedded cluster: its workers' Python agents run in this process."""
    native = fleet._agent_host()
    if native is None:
        return
    with _runtimes_lock:
        if not isinstance(fleet.__dict__.get("_agent_runtime"), _Runtime):
            fleet.__dict__["_agent_runtime"] = _Runtime(native)


def _close(fleet: Any) -> None:
    with _runtimes_lock:
        runtime = fleet.__dict__.pop("_agent_runtime", None)
    if isinstance(runtime, _Runtime):
        runtime.close()


def _host_for_worker(names: list[str]) -> Any:
    """`python -m agentfleet worker --import`: the native host of the agents `names`, served
    by this process."""
    global _worker_runtime
    native = _AgentHost(names)
    with _runtimes_lock:
        _worker_runtime = _Runtime(native)
    return native
