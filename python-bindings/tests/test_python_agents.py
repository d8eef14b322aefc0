"""Agents written in Python (`@af.agent`): a class keeps its state per agent or per
conversation, the code streams text, chats with a worker's model (builtin:echo, SmolLM2 with
real weights), calls other agents (seen in the task's events) and fails with its exception;
embedded workers host the process's agents, and on a running cluster (separate processes)
`python -m agentfleet worker --import MODULE` does: the head places the tasks only there, and
a task whose worker is SIGKILLed runs again on another one."""

import asyncio
import importlib
import json
import os
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import agentfleet as af
from conftest import Node, restartable_head, smollm2_gguf

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- agents of the embedded tests ------------------------------------------------------


@af.agent(per_context=True)
class Notebook:
    """Notes what each conversation told it."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    async def run(self, task: af.AgentTask, ctx: af.AgentContext) -> str:
        self.notes.append(task.input)
        return " ".join(self.notes)


@af.agent
class Tally:
    """Counts the tasks it ran, in every conversation."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self, task: af.AgentTask, ctx: af.AgentContext) -> AsyncIterator[str]:
        self.count += 1
        yield f"{self.count} {id(self)}"


@af.agent
async def Fields(task: af.AgentTask, ctx: af.AgentContext) -> AsyncIterator[str]:
    """Answers with what its code sees of the task."""
    yield json.dumps(
        {
            "id": task.id,
            "agent": task.agent,
            "input": task.input,
            "context_id": task.context_id,
            "attempt": task.attempt,
            "history": task.history,
            "instructions": task.instructions,
            "ctx": [ctx.task_id, ctx.agent, ctx.context_id],
        }
    )


#: What the Narrator waits on after its first piece, by task input (none: it goes on).
GATES: dict[str, threading.Event] = {}


@af.agent
class Narrator:
    """Streams a story in pieces: a chat with builtin:echo and a call of the agent echo."""

    async def run(self, task: af.AgentTask, ctx: af.AgentContext) -> AsyncIterator[str]:
        yield "one "
        gate = GATES.get(task.input)
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        yield "two "
        heard = await ctx.chat(f"chat {task.input}", model="builtin:echo")
        yield f"[{heard}] "
        answer = await ctx.call("echo", f"call {task.input}")
        yield f"<{answer}>"


@af.agent
async def Picky(task: af.AgentTask, ctx: af.AgentContext) -> AsyncIterator[str]:
    """Refuses the input "bad"."""
    yield "looking: "
    if task.input == "bad":
        raise ValueError(f"cannot take {task.input!r}")
    yield f"took {task.input}"


@af.agent
async def Fallback(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Asks Picky, and says what went wrong when Picky failed."""
    try:
        return "picky said " + await ctx.call("Picky", task.input)
    except af.FleetError as e:
        return f"picky failed ({e})"


@af.agent(name="shout")
def shout(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """A plain function: runs on a thread, not on the agents' event loop."""
    return f"{task.input.upper()} on {threading.current_thread().name}"


@af.agent
def countdown(task: af.AgentTask, ctx: af.AgentContext) -> Iterator[str]:
    """A plain generator: each piece streams; it too runs on a thread."""
    for i in range(int(task.input), 0, -1):
        yield f"{i} "
    yield f"on {threading.current_thread().name}"


@af.agent
async def whisper(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """A coroutine: its return value is the answer."""
    heard = await ctx.chat([{"role": "system", "content": "Repeat."}, {"role": "user", "content": task.input}], model="builtin:echo")
    return heard.lower()


@af.agent
async def double(task: af.AgentTask, ctx: af.AgentContext) -> int:
    """A coroutine returning a number: the answer is its text."""
    return int(task.input) * 2


@af.agent
async def Poet(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Has SmolLM2 answer, briefly."""
    return await ctx.chat(task.input, model=SMOLLM2, max_tokens=8, temperature=0.0)


def texts(task: af.Task) -> list[str]:
    return [e.text for e in task.events() if e.kind == "text_delta"]


def said(e: af.Event) -> tuple[str, str, object]:
    """An event as (kind, tool, what it says): a text, a call's parsed arguments, a result."""
    if isinstance(e, af.ToolCall):
        return (e.kind, e.tool, json.loads(e.arguments))
    if isinstance(e, af.ToolResult):
        return (e.kind, "", e.output)  # a result names its call only
    if isinstance(e, af.TextDelta):
        return (e.kind, "", e.text)
    return (e.kind, "", "")


def fresh_context(context: str) -> str:
    """A context id of this test run's own (a rerun in one process starts fresh)."""
    return f"{context}-{time.monotonic_ns()}"


# ---- embedded ---------------------------------------------------------------------------


def test_a_per_context_class_keeps_one_instance_per_conversation(fleet: af.Fleet) -> None:
    """per_context=True: turns of one context_id see the earlier turns' state, another
    context starts from a new instance, and going back to the first finds its state."""
    notebook = fleet.agent(Notebook)
    assert notebook.name == "Notebook"
    first, second = fresh_context("first"), fresh_context("second")
    assert notebook.submit("a", context_id=first).result(timeout=30) == "a"
    assert notebook.submit("b", context_id=first).result(timeout=30) == "a b"
    assert notebook.submit("z", context_id=second).result(timeout=30) == "z"
    assert notebook.submit("c", context_id=first).result(timeout=30) == "a b c"
    # Without a context_id every task is a conversation of its own.
    assert notebook.submit("alone").result(timeout=30) == "alone"
    assert notebook.submit("alone again").result(timeout=30) == "alone again"


@af.agent(state=True, per_context=True)
async def turns(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Counts its conversation's turns in the stored state."""
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return f"{task.context_id}:{ctx.state['n']}"


@af.agent
async def stateless(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Reads a state it did not declare."""
    return str(ctx.state)


@af.agent(state=True)
async def recursive(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Calls itself: one task per agent at a time, so the inner task could never start."""
    if task.input == "inner":
        return "the inner task ran"
    try:
        return await ctx.call("recursive", "inner")
    except af.FleetError as e:
        return str(e)


def test_an_actor_calling_its_own_key_fails_at_once(fleet: af.Fleet) -> None:
    """The inner task would wait for the task that holds the state, which waits for it:
    the call fails at once, saying why, instead of hanging."""
    answer = fleet.agent(recursive).submit("outer").result(timeout=30)
    assert "cannot call its own actor" in answer, answer


def test_a_swarm_of_actors_is_mapped_one_context_per_input(fleet: af.Fleet) -> None:
    """`map` with a context per input: each conversation's tasks run one at a time from its
    stored state, so each counts exactly its own turns; a task without a context starts
    from an empty state each time; a list of the wrong length is refused; an agent that
    did not declare state=True has none."""
    agent = fleet.agent(turns)
    a, b, c = (fresh_context(n) for n in "abc")
    answers = agent.map(["x"] * 6, context_id=[a, b, a, c, a, b], progress=False)
    assert sorted(answers) == sorted([f"{a}:1", f"{a}:2", f"{a}:3", f"{b}:1", f"{b}:2", f"{c}:1"]), answers
    assert agent.map(["x", "y"], progress=False) == [":1", ":1"]
    with pytest.raises(ValueError, match="2 contexts for 3 prompts"):
        agent.map(["x"] * 3, context_id=[a, b])
    with pytest.raises(af.FleetError, match="keeps no state: declare it with @af.agent"):
        fleet.agent(stateless).submit("x", context_id=a).result(timeout=30)


def test_a_class_keeps_one_instance_across_tasks(fleet: af.Fleet) -> None:
    """Without per_context one instance serves every task of the agent, whatever its
    context, on both embedded workers, concurrent tasks included."""
    tally = fleet.agent(Tally)
    answers = [tally.submit("x", context_id=fresh_context(f"c{i}")).result(timeout=30) for i in range(3)]
    counts = [int(a.split()[0]) for a in answers]
    assert counts == [1, 2, 3], answers
    instances = {a.split()[1] for a in answers}
    assert len(instances) == 1, answers
    # Many at once: each task counted once, on the one instance.
    answers = tally.map(["y"] * 40)
    assert sorted(int(a.split()[0]) for a in answers) == list(range(4, 44)), answers
    assert {a.split()[1] for a in answers} == instances


def test_the_code_sees_the_task_its_conversation_and_instructions(fleet: af.Fleet) -> None:
    """AgentTask carries the task's id, agent, input, context, attempt, the conversation
    before it and the agent's instructions; the context names the same task."""
    fields = fleet.agent(Fields, instructions="Be exact.")
    context = fresh_context("fields")
    task = fields.submit("one", context_id=context)
    seen = json.loads(task.result(timeout=30))
    assert seen == {
        "id": task.id,
        "agent": "Fields",
        "input": "one",
        "context_id": context,
        "attempt": 1,
        "history": [],
        "instructions": "Be exact.",
        "ctx": [task.id, "Fields", context],
    }
    first_answer = task.result(timeout=30)
    again = fields.submit("two", context_id=context)
    seen = json.loads(again.result(timeout=30))
    assert seen["id"] == again.id and seen["input"] == "two"
    assert seen["history"] == [{"role": "user", "content": "one"}, {"role": "assistant", "content": first_answer}]


def test_a_class_agent_streams_chats_and_calls_another_agent(fleet: af.Fleet, echo: af.Agent) -> None:
    """Each yield streams as a text_delta while the code still runs (the first arrives
    before the task can end); ctx.chat answers from builtin:echo; ctx.call runs the agent
    echo as a sub-task, shown as a tool_call then a tool_result event."""
    narrator = fleet.agent(Narrator)
    gate = GATES["story"] = threading.Event()
    try:
        task = narrator.submit("story")
        events = task.events()
        first = next(e for e in events if e.kind == "text_delta")
        assert first.text == "one "
        assert not task.done(), "the first piece came only after the code ended"
        gate.set()
        rest = list(events)
    finally:
        gate.set()
        del GATES["story"]
    seen = [
        said(e)
        for e in [first, *rest]
        if e.kind in ("text_delta", "tool_call", "tool_result", "completed", "failed")
    ]
    assert [text for kind, _, text in seen if kind == "text_delta"] == ["one ", "two ", "[chat story] ", "<call story>"]
    assert [s for s in seen if s[0] in ("tool_call", "tool_result")] == [
        ("tool_call", "echo", {"input": "call story"}),
        ("tool_result", "", "call story"),
    ]
    # The events keep the order in which the code did things: text yielded before a call
    # comes before the call's events, text after its answer after them.
    assert seen == [
        ("text_delta", "", "one "),
        ("text_delta", "", "two "),
        ("text_delta", "", "[chat story] "),
        ("tool_call", "echo", {"input": "call story"}),
        ("tool_result", "", "call story"),
        ("text_delta", "", "<call story>"),
        ("completed", "", ""),
    ], seen
    assert task.result(timeout=30) == "one two [chat story] <call story>"
    # Tasks on one instance run concurrently, each with its own stream.
    stories = [f"story {i}" for i in range(20)]
    assert narrator.map(stories) == [f"one two [chat {s}] <call {s}>" for s in stories]


def test_an_exception_fails_the_task_and_the_agent_serves_the_next(fleet: af.Fleet) -> None:
    """The exception's type and message fail the task (InternalError, and the failed event);
    the agent answers its next task; a caller's ctx.call raises a FleetError it can catch."""
    picky = fleet.agent(Picky)
    task = picky.submit("bad")
    with pytest.raises(af.InternalError, match=r"failed: ValueError: cannot take 'bad'") as failure:
        task.result(timeout=30)
    assert failure.value.kind == "internal"
    failed = [e for e in task.events() if e.kind == "failed"]
    assert len(failed) == 1 and "ValueError: cannot take 'bad'" in failed[0].error, failed
    assert texts(task) == ["looking: "]
    assert picky.submit("good").result(timeout=30) == "looking: took good"

    fallback = fleet.agent(Fallback)
    answer = fallback.submit("bad").result(timeout=30)
    assert answer.startswith("picky failed (") and "ValueError: cannot take 'bad'" in answer, answer
    # Named once, by the head that relays the callee's failure.
    assert answer.count("agent Picky failed") == 1, answer
    assert fallback.submit("fine").result(timeout=30) == "picky said looking: took fine"


def test_sync_functions_generators_and_coroutines_are_agents(fleet: af.Fleet) -> None:
    """A plain function runs on a thread (not the agents' event loop) and returns the
    answer; a plain generator streams its pieces; a coroutine returns the answer (after
    awaiting the context), its value made text."""
    answer = fleet.agent(shout).submit("hello").result(timeout=30)
    assert answer.startswith("HELLO on "), answer
    assert answer != "HELLO on agentfleet-agents", "a plain function ran on the event loop"
    task = fleet.agent(countdown).submit("3")
    assert texts(task)[:3] == ["3 ", "2 ", "1 "]
    assert task.result(timeout=30).startswith("3 2 1 on ")
    assert texts(task)[3:] != ["on agentfleet-agents"], "a plain generator ran on the event loop"
    assert fleet.agent(whisper).submit("QUIET Please").result(timeout=30) == "quiet please"
    assert fleet.agent(double).submit("21").result(timeout=30) == "42"


def test_a_python_agent_chats_with_smollm2(tmp_path: Path) -> None:
    """ctx.chat on SmolLM2 (real weights, a GGUF of the embedded workers' models dir,
    loaded on first use): a short, non-empty answer that is not the prompt."""
    (tmp_path / SMOLLM2).symlink_to(smollm2_gguf())
    with af.init(workers=1, models_dir=tmp_path) as fleet:
        prompt = "Write a long story about a dragon who learns to fly."
        answer = fleet.agent(Poet).submit(prompt).result(timeout=60)
    assert answer.strip(), "SmolLM2 answered nothing"
    assert answer.strip() != prompt
    # max_tokens=8 reached the model: a story stops within a few words.
    assert len(answer.split()) <= 8, answer


@af.agent
async def Quitter(task: af.AgentTask, ctx: af.AgentContext) -> AsyncIterator[str]:
    """Leaves the way a script would: SystemExit."""
    yield "bye "
    sys.exit(3)


@af.agent
async def SelfCancel(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Cancels a task of its own and awaits it: its own CancelledError, not the worker's."""
    inner = asyncio.ensure_future(asyncio.sleep(30))
    inner.cancel()
    await inner
    return "unreachable"


TICKS: list[int] = []


@af.agent
def Ticker(task: af.AgentTask, ctx: af.AgentContext) -> Iterator[str]:
    """A plain generator that never ends on its own."""
    n = 0
    while True:
        n += 1
        TICKS.append(n)
        time.sleep(0.005)
        yield "."


WIPED: list[str] = []


@af.tool(requires_approval=True)
def wipe(target: str) -> str:
    """Wipes a target (a person must approve each call)."""
    WIPED.append(target)
    return f"wiped {target}"


@af.agent
async def Sneaky(task: af.AgentTask, ctx: af.AgentContext) -> str:
    """Calls the hosted function wipe, which its agent may or may not list."""
    try:
        return await ctx.call("wipe", target=task.input)
    except af.FleetError as e:
        return f"refused: {e}"


def test_a_system_exit_fails_its_task_and_the_host_serves_on(fleet: af.Fleet) -> None:
    """SystemExit (or KeyboardInterrupt) in an agent fails that task; the event loop lives
    and the next tasks run; a CancelledError the code raises itself fails its task too."""
    with pytest.raises(af.FleetError, match=r"SystemExit: 3"):
        fleet.agent(Quitter).submit("x").result(timeout=30)
    with pytest.raises(af.FleetError, match=r"CancelledError"):
        fleet.agent(SelfCancel).submit("x").result(timeout=30)
    assert fleet.agent(double).submit("4").result(timeout=30) == "8"


def test_a_canceled_plain_generator_stops(fleet: af.Fleet) -> None:
    """Canceling a task stops a plain generator at its next yield (its thread is not held
    forever)."""
    TICKS.clear()
    task = fleet.agent(Ticker).submit("go")
    events = task.events()
    next(e for e in events if e.kind == "text_delta")
    task.cancel()
    with pytest.raises(af.CanceledError):
        task.result(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        before = len(TICKS)
        time.sleep(0.2)
        if len(TICKS) == before:
            break
        assert time.monotonic() < deadline, "the canceled generator kept running"


def test_a_python_agent_calls_only_listed_functions_with_their_approvals(fleet: af.Fleet) -> None:
    """A hosted function the agent does not list is refused (the code may call any agent,
    not any function); one it lists that requires approval waits for a person like a
    model's call: the task is input-required until approved."""
    WIPED.clear()
    fleet.agent("wipe-holder", model="builtin:echo", tools=[wipe])  # hosts wipe in this process
    answer = fleet.agent("sneaky", model="python:Sneaky").submit("prod").result(timeout=30)
    assert answer.startswith("refused:") and "not one of agent sneaky's tools" in answer, answer
    assert WIPED == []

    guarded = fleet.agent("guarded", model="python:Sneaky", tools=[wipe])
    task = guarded.submit("staging")
    request = task.wait_input(timeout=30)
    assert request is not None and task.state == "input-required", request
    assert WIPED == [], "the call ran before it was approved"
    task.approve()
    assert task.result(timeout=30) == "wiped staging"
    assert WIPED == ["staging"]


# ---- a running cluster: head and workers as separate processes --------------------------

WAITER = '''
"""Tells which process runs it, then waits for a file (the task's input) to exist."""
import asyncio
import os

import agentfleet as af


@af.agent
class Waiter:
    async def run(self, task, ctx):
        yield f"pid={os.getpid()} attempt={task.attempt};"
        while not os.path.exists(task.input):
            await asyncio.sleep(0.01)
        yield "done"
'''


class Cluster:
    """A head (`python -m agentfleet head`) and the workers a test starts, as processes."""

    def __init__(self) -> None:
        self.head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--token", "s3cret", "--join-token", "j0in")
        assert self.head.proc.stdout is not None
        line = self.head.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.address = "http://" + line.removeprefix("listening on ").strip()
        self.workers: list[Node] = []

    def worker(self, *args: str) -> Node:
        """Starts a worker: `--import MODULE` for one hosting a module's Python agents."""
        node = Node("worker", "--head", self.address, "--join-token", "j0in", *args)
        self.workers.append(node)
        return node

    def wait_for_workers(self, fleet: af.Fleet, count: int) -> None:
        deadline = time.monotonic() + 20
        while len(fleet.status()["workers"]) < count:  # type: ignore[arg-type]
            for node in self.workers:
                if node.proc.poll() is not None and node.proc.returncode != -9:
                    assert node.proc.stderr is not None
                    pytest.fail(f"a worker exited ({node.proc.returncode}): {node.proc.stderr.read()}")
            assert time.monotonic() < deadline, f"{count} workers did not join"
            time.sleep(0.01)

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.stop()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Cluster]:
    """A head with no worker yet; workers import modules from tmp_path (PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def waiter_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """The module `waiter_agents` (the agent Waiter), written to tmp_path and imported here
    too: this process defines the agent it registers, but a remote cluster's workers run it."""
    (tmp_path / "waiter_agents.py").write_text(textwrap.dedent(WAITER))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("waiter_agents")
    yield module
    sys.modules.pop("waiter_agents", None)


def test_a_task_of_a_killed_python_worker_runs_again_on_another(cluster: Cluster, waiter_module: ModuleType, tmp_path: Path) -> None:
    """Two `python -m agentfleet worker --import` processes host the agent; the one that
    runs a task is SIGKILLed mid-task: the task runs again on the other (attempt 2, as the
    code sees it too) and completes with that attempt's text."""
    workers = [cluster.worker("--import", "waiter_agents") for _ in range(2)]
    with af.init(cluster.address, token="s3cret") as fleet:
        cluster.wait_for_workers(fleet, 2)
        waiter = fleet.agent(waiter_module.Waiter)
        assert waiter.name == "Waiter"
        go = tmp_path / "go"
        task = waiter.submit(str(go))
        events = task.events()
        first = next(e for e in events if e.kind == "text_delta")
        pids = {node.proc.pid: node for node in workers}
        pid = int(first.text.split()[0].removeprefix("pid="))
        assert pid in pids, (first.text, list(pids))
        assert pid != os.getpid(), "the task ran in the test's process"
        assert first.text == f"pid={pid} attempt=1;"
        assert first.attempt == 1
        pids.pop(pid).stop()  # SIGKILL, and reaped
        (other,) = pids
        go.touch()
        assert task.result(timeout=30) == f"pid={other} attempt=2;done"
        kinds = [(e.kind, e.attempt) for e in task.events() if e.kind in ("retrying", "text_delta", "completed", "failed")]
        assert kinds == [("text_delta", 1), ("retrying", 1), ("text_delta", 2), ("text_delta", 2), ("completed", 2)]


STEPPER = '''
"""Asks its user a name, then counts with the tool `count` five times, waiting for a file
(the task's input) after the third."""
import asyncio
import os

import agentfleet as af


@af.agent
class Stepper:
    async def run(self, task, ctx):
        name = await ctx.ask("Who is counting?")
        yield f"pid={os.getpid()};{name} counts"
        for n in range(1, 6):
            yield " " + await ctx.call("count", n=n)
            if n == 3:
                while not os.path.exists(task.input):
                    await asyncio.sleep(0.01)
'''

COUNTED: list[int] = []


def test_a_retried_python_agent_is_answered_from_its_record_and_makes_no_call_twice(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A Python agent asks its user, then calls a tool five times; its worker is SIGKILLed
    once the third result is stored. The retry runs the code again from the start: the
    question and the three calls are answered from the record (the user is not asked again,
    the tool is not called again) and only the fourth and fifth calls are made."""
    (tmp_path / "stepper_agents.py").write_text(textwrap.dedent(STEPPER))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("stepper_agents")
    workers = [cluster.worker("--import", "stepper_agents") for _ in range(2)]
    COUNTED.clear()
    try:
        with af.init(cluster.address, token="s3cret") as fleet:
            cluster.wait_for_workers(fleet, 2)

            @fleet.tool
            def count(n: int) -> str:
                """Counts n."""
                COUNTED.append(n)
                return str(n)

            stepper = fleet.agent(module.Stepper, tools=[count], ask_user=True, max_retries=2)
            go = tmp_path / "go"
            task = stepper.submit(str(go))
            assert task.wait_input(timeout=30) is not None
            task.reply("Ann")
            results, pid = 0, 0
            for event in task.events():
                if event.kind == "text_delta" and event.text.startswith("pid="):
                    pid = int(event.text.split(";")[0].removeprefix("pid="))
                if event.kind == "tool_result" and event.attempt == 1:
                    results += 1  # the question's answer, then the counts
                if results == 4:
                    break
            assert COUNTED == [1, 2, 3], COUNTED
            victim = next(node for node in workers if node.proc.pid == pid)
            victim.stop()  # SIGKILL, and reaped
            go.touch()
            assert task.result(timeout=30).split(";", 1)[1] == "Ann counts 1 2 3 4 5"
            assert COUNTED == [1, 2, 3, 4, 5], COUNTED
            retry = [e for e in task.events() if e.attempt == 2]
            assert not [e for e in retry if e.kind == "input_required"], "the user was asked again"
            calls = [(e.tool, e.replayed) for e in retry if e.kind == "tool_call"]
            assert calls == [("ask_user", True), *[("count", True)] * 3, *[("count", False)] * 2], calls
    finally:
        sys.modules.pop("stepper_agents", None)


def test_python_agents_go_only_to_workers_that_host_them(cluster: Cluster, waiter_module: ModuleType, tmp_path: Path) -> None:
    """With only a plain worker (no --import) the submit fails: no worker hosts the Python
    agent; once a worker imports it, every task goes there and none to the plain worker."""
    cluster.worker()
    with af.init(cluster.address, token="s3cret") as fleet:
        cluster.wait_for_workers(fleet, 1)
        waiter = fleet.agent(waiter_module.Waiter)
        go = tmp_path / "go"
        go.touch()
        with pytest.raises(af.FleetError, match='no worker hosts the Python agent "Waiter"'):
            waiter.submit(str(go)).result(timeout=30)

        hosting = cluster.worker("--import", "waiter_agents")
        cluster.wait_for_workers(fleet, 2)
        answers = waiter.map([str(go)] * 20)
        assert answers == [f"pid={hosting.proc.pid} attempt=1;done"] * 20


def test_agent_code_sees_the_clients_context_id_and_tenants_never_share_an_instance() -> None:
    """Outside the default tenant the worker names a conversation "TENANT\\x1fCONTEXT" (two
    tenants may pick the same context id): the code sees the client's id and the tenant,
    and per-context instances are kept by the whole name."""
    from agentfleet.agents import AgentTask, _Code, _Runtime

    def task(context_id: str) -> AgentTask:
        return AgentTask("t", "Notebook", "x", context_id, 1, [], "")

    ours, theirs, default = task("a\x1fchat"), task("b\x1fchat"), task("chat")
    assert (ours.context_id, ours.tenant) == ("chat", "a")
    assert (default.context_id, default.tenant) == ("chat", "")
    runtime = object.__new__(_Runtime)
    runtime._instances, runtime._contexts = {}, {}
    code = _Code(Notebook, None, None, per_context=True)
    first = runtime._instance(code, ours)
    assert runtime._instance(code, task("a\x1fchat")) is first
    assert runtime._instance(code, theirs) is not first
    assert runtime._instance(code, default) is not first


# ---- virtual actors: ctx.state, stored by the head ---------------------------------------


ACTORS = '''
"""Actors keeping their state in the head's store (state=True)."""
import asyncio
import os
import time

import agentfleet as af


@af.agent(state=True, per_context=True)
class Counter:
    """Counts each conversation's turns."""

    async def run(self, task, ctx):
        ctx.state["turns"] = ctx.state.get("turns", 0) + 1
        return f"pid={os.getpid()} turn {ctx.state['turns']}"


@af.agent(state=True, per_context=True)
async def tally(task, ctx):
    """Reads the count, waits (another activation of the key would run here), writes it back."""
    seen = ctx.state.get("n", 0)
    start = time.time()
    await asyncio.sleep(0.02)
    ctx.state["n"] = seen + 1
    return f"{seen + 1} {start} {time.time()} {os.getpid()}"
'''


@pytest.fixture
def actors_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """The module `actor_agents` written to tmp_path (the workers' PYTHONPATH) and imported."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "actor_agents.py").write_text(textwrap.dedent(ACTORS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("actor_agents")
    sys.modules.pop("actor_agents", None)


def test_an_actor_s_state_outlives_its_worker_and_its_head(actors_module: ModuleType, tmp_path: Path) -> None:
    """A per-conversation actor counts its turns in ctx.state; after three turns its worker
    and the head (a file store) are SIGKILLed. A head started again on its data and a new
    worker go on from the stored count: turn 4, on the other process; another conversation
    starts from 1."""
    address, start_head = restartable_head(tmp_path / "head-data")

    def start_worker() -> Node:
        return Node("worker", "--head", address, "--join-token", "j0in", "--import", "actor_agents")

    def joined(fleet: af.Fleet) -> None:
        deadline = time.monotonic() + 20
        while not fleet.status()["workers"]:
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.01)

    nodes = [start_head(), start_worker()]
    try:
        with af.init(address, token="s3cret") as fleet:
            joined(fleet)
            counter = fleet.agent(actors_module.Counter)
            answers = [counter.submit("hi", context_id="c1").result(timeout=30) for _ in range(3)]
            first_pid = answers[0].split()[0]
            assert answers == [f"{first_pid} turn {n}" for n in (1, 2, 3)], answers
            saved = [e.state for e in counter.submit("hi", context_id="c0").events() if e.kind == "state_saved"]
            assert saved == [{"turns": 1}], saved
        for node in nodes:
            node.stop()  # SIGKILL, and reaped
        nodes = [start_head(), start_worker()]
        with af.init(address, token="s3cret") as fleet:
            joined(fleet)
            counter = fleet.agent(actors_module.Counter)
            fourth = counter.submit("hi", context_id="c1").result(timeout=30)
            assert fourth.endswith(" turn 4") and not fourth.startswith(first_pid + " "), fourth
            assert counter.submit("hi", context_id="c2").result(timeout=30).endswith(" turn 1")
            # The stored states, read from outside.
            assert fleet.actor_state(actors_module.Counter, context_id="c1") == {"turns": 4}
            listed = fleet.actor_states("Counter")
            assert [(a["context_id"], a["version"]) for a in listed] == [("c2", 1), ("c1", 4), ("c0", 1)], listed
            # The head files a state never stored under unknown_task (gRPC NOT_FOUND).
            with pytest.raises(af.UnknownTaskError, match="no stored state"):
                fleet.actor_state("Counter", context_id="never")
            # Deleting the context deletes its state.
            fleet.delete_context("c1")
            assert counter.submit("hi", context_id="c1").result(timeout=30).endswith(" turn 1")
    finally:
        for node in nodes:
            node.stop()


def test_one_task_of_an_actor_runs_at_a_time_across_workers(cluster: Cluster, actors_module: ModuleType) -> None:
    """Twenty tasks of one conversation submitted at once to an actor hosted by two worker
    processes: they run one at a time (their recorded start and end times never overlap)
    and each reads the count the one before stored (1 to 20, none lost); another
    conversation's tasks run beside them."""
    for _ in range(2):
        cluster.worker("--import", "actor_agents")
    with af.init(cluster.address, token="s3cret") as fleet:
        cluster.wait_for_workers(fleet, 2)
        tally = fleet.agent(actors_module.tally)
        tasks = [tally.submit(str(i), context_id="k") for i in range(20)]
        beside = [tally.submit(str(i), context_id=f"other-{i}") for i in range(5)]
        answers = [t.result(timeout=60).split() for t in tasks]
        assert sorted(int(a[0]) for a in answers) == list(range(1, 21)), answers
        spans = sorted((float(a[1]), float(a[2])) for a in answers)
        overlapping = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
        assert not overlapping, overlapping
        assert [t.result(timeout=30).split()[0] for t in beside] == ["1"] * 5
