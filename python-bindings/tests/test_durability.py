"""An embedded cluster's head keeps its tasks and agents under ``data_dir`` across restarts."""

from collections.abc import Callable
import threading
import time
from pathlib import Path

import pytest

import agentfleet as af

from conftest import Node, restartable_head


def test_a_restarted_embedded_cluster_has_its_tasks_and_agents_back(tmp_path: Path) -> None:
    with af.init(workers=1, data_dir=tmp_path) as fleet:
        keeper = fleet.agent("keeper", model="builtin:echo", instructions="Repeat.")
        assert keeper.map(["a b", "c d", "e f"]) == ["a b", "c d", "e f"]
        assert fleet.status()["retained_tasks"] == 3
    assert (tmp_path / "head.redb").is_file()

    with af.init(workers=1, data_dir=tmp_path) as fleet:
        status = fleet.status()
        assert status["retained_tasks"] == 3, status
        assert status["agents"] == 1, status
        # The agent registered before the restart runs without registering it again.
        assert fleet.get_agent("keeper").submit("g h").result(timeout=30) == "g h"


def prompt_tokens(task: af.Task) -> int:
    """The prompt tokens of a task's completed event (builtin:echo: the prompt's words)."""
    done = [e for e in task.events() if e.kind == "completed"]
    assert len(done) == 1, done
    return done[0].prompt_tokens


def test_a_context_s_conversation_is_kept_read_and_deleted(tmp_path: Path) -> None:
    """The head keeps a context's turns with each agent across a restart; ``fleet.context``
    reads them, ``fleet.contexts`` lists them, ``fleet.delete_context`` forgets them (and
    then the context's next task starts anew: builtin:echo counts the prompt's words)."""
    with af.init(workers=2, data_dir=tmp_path) as fleet:
        parrot = fleet.agent("parrot", model="builtin:echo")
        assert parrot.submit("one two", context_id="talk").result(timeout=30) == "one two"
        assert parrot.submit("three", context_id="talk").result(timeout=30) == "three"
        fleet.agent("mimic", model="builtin:echo").submit("four", context_id="talk").result(timeout=30)
        parrot.submit("elsewhere", context_id="other").result(timeout=30)
    with af.init(workers=1, data_dir=tmp_path) as fleet:
        talk = fleet.context("talk")
        assert talk["parrot"] == [
            {"role": "user", "content": "one two"},
            {"role": "assistant", "content": "one two"},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": "three"},
        ], talk
        assert talk["mimic"] == [{"role": "user", "content": "four"}, {"role": "assistant", "content": "four"}]
        assert fleet.context("talk", agent="mimic") == {"mimic": talk["mimic"]}
        listed = fleet.contexts()
        assert [(c["context_id"], c["agent"], c["turns"]) for c in listed] == [
            ("other", "parrot", 2),
            ("talk", "mimic", 2),
            ("talk", "parrot", 4),
        ], listed
        assert [c["agent"] for c in fleet.contexts(context_id="talk", agent="parrot")] == ["parrot"]
        # The next turn's prompt holds the six words said so far (both sides) and its own.
        parrot = fleet.get_agent("parrot")
        assert prompt_tokens(parrot.submit("five", context_id="talk")) == 7
        assert fleet.delete_context("talk") == 2
        assert fleet.delete_context("talk") == 0
        assert fleet.context("talk") == {}
        assert prompt_tokens(parrot.submit("anew", context_id="talk")) == 1
        with pytest.raises(af.InvalidRequestError):
            fleet.delete_context("")


def test_without_data_dir_nothing_is_kept_and_nothing_left_behind() -> None:
    with af.init(workers=1) as fleet:
        fleet.agent("gone", model="builtin:echo").map(["x"])
    with af.init(workers=1) as fleet:
        assert fleet.status()["retained_tasks"] == 0
        assert fleet.status()["agents"] == 0


def map_through(fleet: af.Fleet, disrupt: "Callable[[], None]") -> None:
    """Runs `map` over 600 slow echo tasks, calls `disrupt` once 100 have completed, and
    checks that `map` returns every result in order."""
    slow = fleet.agent("slow", model="builtin:echo", model_options={"token_delay_ms": "5"})
    inputs = [f"task {i} a b c d e f g h i j" for i in range(600)]
    result: dict[str, object] = {}
    runner = threading.Thread(target=lambda: result.update(out=slow.map(inputs)), daemon=True)
    runner.start()
    while fleet.status()["tasks_completed"] < 100:
        assert runner.is_alive(), result
        time.sleep(0.005)
    disrupt()
    runner.join(timeout=120)
    assert not runner.is_alive(), "map did not return"
    assert result.get("out") == inputs


def test_map_rides_through_a_head_restart(tmp_path: Path) -> None:
    """A remote head is SIGKILLed and started again on its data while `map` runs: `map`
    reconnects, follows its accepted tasks and returns every result in order."""
    address, start_head = restartable_head(tmp_path)
    head = start_head()
    worker = Node("worker", "--head", address, "--join-token", "j0in", "--slots", "16")
    try:
        fleet = af.init(address, token="s3cret")
        deadline = time.monotonic() + 15
        while not fleet.status()["workers"]:
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.01)

        def restart() -> None:
            nonlocal head
            head.stop()
            head = start_head()

        map_through(fleet, restart)
    finally:
        worker.stop()
        head.stop()


def test_map_rides_through_a_failover_to_a_standby_head(postgres_url: str) -> None:
    """Two heads on one PostgreSQL store, `init` given both: the leader is SIGKILLed while
    `map` runs, the standby takes over, and `map` returns every result in order."""
    def start_head() -> tuple[Node, str]:
        head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--token", "s3cret", "--join-token", "j0in", "--store", postgres_url, "--lease-ms", "1500")
        assert head.proc.stdout is not None
        line = head.proc.stdout.readline()
        assert line.startswith("listening on "), line
        return head, "http://" + line.split()[-1]

    leader, first = start_head()
    fleet = None
    nodes = [leader]
    try:
        deadline = time.monotonic() + 15
        while True:  # The first head leads before the second starts.
            try:
                fleet = af.init(first, token="s3cret")
                fleet.status()
                break
            except af.FleetError:
                assert time.monotonic() < deadline, "the first head did not lead"
                time.sleep(0.05)
        standby, second = start_head()
        nodes.append(standby)
        worker = Node("worker", "--head", f"{first},{second}", "--join-token", "j0in", "--slots", "16")
        nodes.append(worker)
        fleet = af.init([first, second], token="s3cret")
        while not fleet.status()["workers"]:
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.01)
        map_through(fleet, leader.stop)
        assert len(fleet.status()["workers"]) == 1  # Served by the standby now.
    finally:
        for node in nodes:
            node.stop()


def test_a_task_waiting_for_its_user_waits_through_a_head_restart(tmp_path: Path) -> None:
    """A task is input-required when its head is SIGKILLed and started again on its data:
    it is still input-required after the restart, and the reply reaches the worker that
    runs it (which kept waiting), so the task completes with it."""
    address, start_head = restartable_head(tmp_path)
    head = start_head()
    worker = Node("worker", "--head", address, "--join-token", "j0in")
    try:
        with af.init(address, token="s3cret") as fleet:
            asker = fleet.agent("asker", model="builtin:echo", ask_user=True)
            ask = '<tool_call>{"name": "ask_user", "arguments": {"question": "Which city?"}}</tool_call>'
            task = asker.submit(ask)
            assert task.wait_input(timeout=30) is not None
            head.stop()
            head = start_head()
            # The worker rejoins; until it has, the head says to reply again.
            deadline = time.monotonic() + 30
            while True:
                try:
                    task.reply("Lyon")
                    break
                except af.UnavailableError as e:
                    assert time.monotonic() < deadline, f"the worker did not rejoin: {e}"
                    time.sleep(0.05)
            assert task.result(timeout=30) == "Lyon"
    finally:
        worker.stop()
        head.stop()


def written_call(tool: str, arguments: str) -> str:
    """A tool call as a model writes one: builtin:echo repeats it, and its worker calls it."""
    return f'calling <tool_call> {{"name":"{tool}","arguments":{arguments}}} </tool_call>'


def test_a_tool_that_must_not_run_twice_is_not_called_again_by_a_retry(tmp_path: Path) -> None:
    """A tool with ``idempotent=False`` (and one an agent names in ``call_once``) is in
    flight when its worker is SIGKILLed: the retry on another worker fails, naming the tool,
    and the tool ran once."""
    address, start_head = restartable_head(tmp_path)
    head = start_head()
    workers = {
        name: Node("worker", "--head", address, "--join-token", "j0in", "--name", name)
        for name in ("w0", "w1", "w2")
    }
    try:
        fleet = af.init(address, token="s3cret")
        deadline = time.monotonic() + 15
        while len(fleet.status()["workers"]) < 3:
            assert time.monotonic() < deadline, "the workers did not join"
            time.sleep(0.01)
        calls: list[str] = []
        started = threading.Semaphore(0)
        never = threading.Event()

        def in_flight(name: str) -> str:
            calls.append(name)
            started.release()
            never.wait(60)
            return "done"

        @fleet.tool(idempotent=False)
        def pay(amount: int) -> str:
            """Pays an amount."""
            return in_flight("pay")

        @fleet.tool
        def ship(item: str) -> str:
            """Ships an item."""
            return in_flight("ship")

        payer = fleet.agent("payer", model="builtin:echo", tools=[pay], max_retries=2)
        shipper = fleet.agent("shipper", model="builtin:echo", tools=[ship], call_once=[ship], max_retries=2)
        for agent, tool, arguments in ((payer, "pay", '{"amount":5}'), (shipper, "ship", '{"item":"book"}')):
            before = {w["id"]: w["tasks_assigned"] for w in fleet.status()["workers"]}
            task = agent.submit(written_call(tool, arguments))
            assert started.acquire(timeout=30), f"{tool} was never called"
            running = [w["id"] for w in fleet.status()["workers"] if w["tasks_assigned"] > before[w["id"]]]
            assert len(running) == 1, running
            workers.pop(running[0]).stop()
            with pytest.raises(af.FleetError, match=f"tool {tool} .* at most once"):
                task.result(timeout=30)
            assert calls.count(tool) == 1, calls
        never.set()
    finally:
        for worker in workers.values():
            worker.stop()
        head.stop()
