"""Durable topics: each topic is a log on the head. Messages get offsets and survive the head;
a follower resumes from an offset, a consumer group shares a topic as a work queue and
resumes after what it acknowledged; agents' publishes land in the same log."""

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import agentfleet as af

from conftest import restartable_head

MESSAGES = 10_000

# A follower in consumer group "indexer": writes each message's offset to a file, then
# acknowledges it (so a line may be written and the process killed before its ack).
FOLLOWER = textwrap.dedent(
    """
    import sys
    import agentfleet as af

    address, out = sys.argv[1], sys.argv[2]
    with af.init(address, token="s3cret") as fleet, open(out, "a", buffering=1) as seen:
        for message in fleet.follow("jobs", group="indexer"):
            seen.write(f"{message.offset} {message.body}\\n")
            message.ack()
    """
)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(what: str, done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.02)


def test_a_group_member_killed_halfway_resumes_after_what_it_acknowledged(tmp_path: Path) -> None:
    """10,000 messages on a file-store head; a group's follower (its own process) is
    SIGKILLed halfway, then the head too. The head started again has every message at its
    offset; a new follower in the group gets exactly those the first had not acknowledged:
    together every message, at most the one in flight at the kill twice."""
    address, start_head = restartable_head(tmp_path / "head-data")

    def follower(out: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", FOLLOWER, address, str(out)], text=True)

    head = start_head()
    first_run, second_run = tmp_path / "first.txt", tmp_path / "second.txt"
    processes: list[subprocess.Popen[str]] = []
    try:
        with af.init(address, token="s3cret") as fleet:
            offsets = []
            for start in range(0, MESSAGES, 1000):
                offsets += fleet.publish("jobs", [f"job {i}" for i in range(start, start + 1000)])
            assert offsets == list(range(MESSAGES)), "offsets are consecutive from 0"
        processes.append(follower(first_run))
        wait_for("half the messages processed", lambda: len(lines(first_run)) >= MESSAGES // 2)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)
        head.proc.send_signal(signal.SIGKILL)
        head.stop()

        head = start_head()
        with af.init(address, token="s3cret") as fleet:
            # The log is whole after the crash, and numbering goes on.
            assert fleet.publish("other", "x") == 0
            replay = fleet.follow("jobs", from_offset=0)
            first = [next(replay) for _ in range(3)]
            assert [(m.offset, m.body) for m in first] == [(0, "job 0"), (1, "job 1"), (2, "job 2")]
            replay.close()
        processes.append(follower(second_run))
        wait_for("the rest processed", lambda: any(line.startswith(f"{MESSAGES - 1} ") for line in lines(second_run)))
    finally:
        for p in processes:
            p.kill()
            p.wait(timeout=10)
        head.stop()

    before = [int(line.split()[0]) for line in lines(first_run)]
    after = [int(line.split()[0]) for line in lines(second_run)]
    assert before == list(range(len(before))), "the first follower got the messages in order"
    assert len(before) >= MESSAGES // 2
    # The second resumes at the first unacknowledged message: at most the last line of the
    # first run (written, then killed before its ack) comes again.
    assert after[0] in (before[-1], before[-1] + 1), (before[-3:], after[:3])
    assert after == list(range(after[0], MESSAGES)), "then every message once, in order"
    assert set(before) | set(after) == set(range(MESSAGES))


def test_a_consumer_group_gives_each_message_to_exactly_one_member() -> None:
    """Three members of one group share 10,000 messages: each message to exactly one of
    them, all of them delivered, every member working."""
    with af.init(workers=1) as fleet:
        members = [fleet.follow("queue", group="pool") for _ in range(3)]
        got: list[list[int]] = [[] for _ in members]
        total = threading.Semaphore(0)

        def consume(index: int) -> None:
            for message in members[index]:
                got[index].append(message.offset)
                message.ack()
                total.release()

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for start in range(0, MESSAGES, 1000):
            fleet.publish("queue", [f"task {i}" for i in range(start, start + 1000)])
        for _ in range(MESSAGES):
            assert total.acquire(timeout=60), f"{sum(map(len, got))} of {MESSAGES} delivered"
        for m in members:
            m.close()
        for t in threads:
            t.join(timeout=10)
            assert not t.is_alive(), "close() ends an iteration waiting in another thread"
    delivered = [o for share in got for o in share]
    assert sorted(delivered) == list(range(MESSAGES)), "each message exactly once"
    assert all(share for share in got), [len(share) for share in got]


def test_a_follower_reads_from_an_offset_and_from_now_on() -> None:
    with af.init(workers=1) as fleet:
        assert fleet.publish("t", ["a", "b", "c"], publisher="me") == [0, 1, 2]
        live = fleet.follow("t")
        assert fleet.publish("t", "d") == 3
        message = next(live)
        assert (message.offset, message.body, message.publisher) == (3, "d", "client")
        assert message.published_at > time.time() - 60
        with fleet.follow("t", from_offset=1) as old:
            assert [next(old).body for _ in range(3)] == ["b", "c", "d"]
        with pytest.raises(ValueError, match="consumer group"):
            message.ack()
        with pytest.raises(af.InvalidRequestError, match="topic"):
            fleet.publish("no spaces", "x")
        with pytest.raises(af.InvalidRequestError, match="not delivered"):
            fleet.follow("t", group="g").ack([99])
        live.close()


def test_a_member_that_leaves_without_acknowledging_hands_its_messages_on() -> None:
    with af.init(workers=1) as fleet:
        fleet.publish("work", ["x", "y", "z"])
        greedy = fleet.follow("work", group="g")
        x = next(greedy)
        assert (x.body, x.ack()) == ("x", 1), "x acknowledged: the group stands at 1"
        assert next(greedy).body == "y"  # taken with z, neither acknowledged
        greedy.close()
        with fleet.follow("work", group="g") as heir:
            assert [(m.offset, m.body) for m in (next(heir), next(heir))] == [(1, "y"), (2, "z")]


@af.agent
async def reporter(task: af.AgentTask, ctx: af.AgentContext) -> str:
    offset = await ctx.publish("news", f"report on {task.input}")
    more = await ctx.publish("news", ["sequel", "finale"])
    return f"{offset} {more}"


def test_an_agent_s_publish_is_stored_with_its_offset() -> None:
    """A Python agent's ``ctx.publish`` goes to the topic's log (from an in-process worker,
    off the mesh) and returns the message's offset."""
    with af.init(workers=1) as fleet:
        fleet.publish("news", "first")
        agent = fleet.agent(reporter, topics=["news"])
        assert agent.submit("rain").result(timeout=30) == "1 [2, 3]"
        with fleet.follow("news", from_offset=0) as log:
            got = [next(log) for _ in range(4)]
        assert [(m.offset, m.publisher, m.body) for m in got] == [
            (0, "client", "first"),
            (1, "reporter", "report on rain"),
            (2, "reporter", "sequel"),
            (3, "reporter", "finale"),
        ]
