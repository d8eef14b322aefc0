"""Durable topics: messages published and followed through a head's file store, one run.

The issue's target: >= 100,000 messages/s published and followed with the file store, 2
workers.

A `fleet-head` process with its default file store (a temporary data dir, `--fsync
periodic`), two `python -m agentfleet worker --import MODULE` processes, and a follower
process (`fleet.follow(topic, from_offset=...)`) that reads until it has every message of
the round; all on 127.0.0.1. Cases (one warm-up, then the median of --rounds rounds):

  a. client batches: this process publishes --messages messages in lists of 1,000
     (`fleet.publish(topic, [...])`, one store write per list, answered once stored)
  b. agents, one message a call: --tasks tasks of `publisher` over the two workers, each
     publishing --messages / --tasks messages one after the other (`await ctx.publish(...)`:
     each a recorded tool step, answered once the head stored the message)
  c. agents, lists: 20 tasks of `batcher` over the two workers, each publishing its share
     in lists of 1,000 (`await ctx.publish(topic, [...])`: a step and a store write a list)

    @af.agent(name="publisher")
    async def publisher(task, ctx):
        for i in range(int(task.input)):
            await ctx.publish("bench", f"message {i}")

    @af.agent(name="batcher")
    async def batcher(task, ctx):
        n = int(task.input)
        for first in range(0, n, 1000):
            await ctx.publish("bench", [f"message {i}" for i in range(first, min(n, first + 1000))])

Each round's rate is messages / (the follower holding the round's last message - the
first publish), so it counts publishing, storing and following together; the publish rate
alone (until the last publish is answered) is reported beside it. Every process started is
stopped at the end.

    python benches/python/topics.py --rounds 5 --out topics.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# The same process handling as the Python agents' benchmark beside this one.
from python_agents_vs_ray import agents_cluster, spawn

MODULE = "topic_bench_agents"
AGENTS = '''
import agentfleet as af


@af.agent(name="publisher")
async def publisher(task, ctx):
    for i in range(int(task.input)):
        await ctx.publish("bench", f"message {i}")
    return "done"


@af.agent(name="batcher")
async def batcher(task, ctx):
    n = int(task.input)
    for first in range(0, n, 1000):
        await ctx.publish("bench", [f"message {i}" for i in range(first, min(n, first + 1000))])
    return "done"
'''

# Follows the topic from an offset; prints the time it holds each round's last message.
FOLLOWER = '''
import sys, time
import agentfleet as af

address, start, per_round = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with af.init(address, token="bench") as fleet:
    print("following", flush=True)
    for message in fleet.follow("bench", from_offset=start):
        if (message.offset - start + 1) % per_round == 0:
            print(message.offset, time.time(), flush=True)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    agents, fleet, _, _ = agents_cluster("fleet-topic-bench-", MODULE, AGENTS, 2)
    env = dict(os.environ, RUST_LOG="warn")
    address = fleet.address
    publisher = fleet.agent(agents.publisher, topics=["bench"])
    batcher = fleet.agent(agents.batcher, topics=["bench"])
    n = args.messages
    follower = spawn([sys.executable, "-c", FOLLOWER, address, "0", str(n)], stdout=subprocess.PIPE, text=True, env=env)
    assert follower.stdout is not None
    if follower.stdout.readline().strip() != "following":
        raise RuntimeError("the follower did not start")
    next_offset = 0

    def followed(last: int) -> float:
        """When the follower held offset `last` (it reports each round's last)."""
        assert follower.stdout is not None
        offset, at = follower.stdout.readline().split()
        if int(offset) != last:
            raise RuntimeError(f"the follower reported {offset}, not {last}")
        return float(at)

    def client_batches() -> tuple[float, float]:
        nonlocal next_offset
        started = time.time()
        for first in range(0, n, 1000):
            offsets = fleet.publish("bench", [f"message {i}" for i in range(first, min(n, first + 1000))])
            assert offsets[0] == next_offset + first, (offsets[0], next_offset, first)
        published = time.time()
        next_offset += n
        return n / (followed(next_offset - 1) - started), n / (published - started)

    def agent_tasks(agent, tasks: int) -> tuple[float, float]:
        nonlocal next_offset
        per_task = n // tasks
        started = time.time()
        assert agent.map([str(per_task)] * tasks, progress=False) == ["done"] * tasks
        published = time.time()
        next_offset += per_task * tasks
        return per_task * tasks / (followed(next_offset - 1) - started), per_task * tasks / (published - started)

    if n % args.tasks or n % 20:
        raise SystemExit("--messages must be a multiple of --tasks and of 20")
    cases = {
        "a. client batches of 1,000": client_batches,
        "b. agents on 2 workers, a message a ctx.publish": lambda: agent_tasks(publisher, args.tasks),
        "c. agents on 2 workers, lists of 1,000": lambda: agent_tasks(batcher, 20),
    }
    for case in cases.values():
        case()  # warm-up
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, case in cases.items():  # in turns: the machine's drift hits each alike
            end_to_end, publish_only = case()
            r = results.setdefault(name, {"published_and_followed_per_s": [], "published_per_s": []})
            r["published_and_followed_per_s"].append(round(end_to_end))
            r["published_per_s"].append(round(publish_only))
    for r in results.values():
        r["median"] = statistics.median(r["published_and_followed_per_s"])
        r["publish_median"] = statistics.median(r["published_per_s"])
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
