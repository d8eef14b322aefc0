"""100,000 actors on one worker (issue 54, item 6): what an idle actor costs, and how fast
idle actors wake, one run.

DESIGN.md's targets: 100,000 idle agent actors on one worker within 1 GiB, and >= 50,000
activations/s (Ray's many_actors: 551 actors/s).

A `fleet-head` process with its default file store (a temporary data dir, `--fsync
periodic`) and one `python -m agentfleet worker --import MODULE` process on 127.0.0.1. The
actor, written to a module in a temporary folder, is a class kept per conversation (one
instance per `context_id` on its worker) whose state the head stores:

    @af.agent(name="counter", state=True, per_context=True)
    class Counter:
        def __init__(self):
            self.seen = 0                      # in the instance, on the worker

        async def run(self, task, ctx):
            self.seen += 1
            ctx.state["n"] = ctx.state.get("n", 0) + 1     # stored by the head
            return task.input

Steps (each task `map`ped with its own context: `context_id=[...]`):
  1. warm-up: 1,000 tasks on 1,000 keys, then the processes' RSS;
  2. create: one task on each of --actors new keys (an instance made, its state stored)
     -> activations/s; then RSS: (worker RSS growth) / actors is an idle actor's memory on
     its worker, (head RSS growth) / actors what the head holds per actor (its stored state,
     and the task each left in the head's retention);
  3. wake: --rounds passes of one task on every key again (the instance found, the state
     loaded and stored) -> activations/s, median and all passes.
Every process started is stopped at the end.

    python benches/python/actors_at_scale.py --actors 100000 --rounds 3 --out actors.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

# The same process handling as the Python agents' benchmark beside this one.
from python_agents_vs_ray import agents_cluster

MODULE = "actors_at_scale_agents"
AGENTS = '''
import agentfleet as af


@af.agent(name="counter", state=True, per_context=True)
class Counter:
    def __init__(self):
        self.seen = 0

    async def run(self, task, ctx):
        self.seen += 1
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return task.input
'''


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    agents, fleet, head, (worker,) = agents_cluster("fleet-actors-bench-", MODULE, AGENTS, 1)
    counter = fleet.agent(agents.Counter)

    def run(keys: list[str]) -> float:
        """One task per key; activations/s."""
        started = time.perf_counter()
        answers = counter.map(keys, context_id=keys, progress=False)
        took = time.perf_counter() - started
        assert answers == keys, "wrong answers"
        return len(keys) / took

    run([f"warm{i}" for i in range(1000)])
    before = {"head": rss_mib(head.pid), "worker": rss_mib(worker.pid)}
    keys = [f"k{i}" for i in range(args.actors - 1000)]
    created = run(keys)
    time.sleep(1)  # the head's store and the worker settle
    after = {"head": rss_mib(head.pid), "worker": rss_mib(worker.pid)}
    woken = [run(keys) for _ in range(args.rounds)]
    last = {"head": rss_mib(head.pid), "worker": rss_mib(worker.pid)}
    n = len(keys)
    results = {
        "actors": args.actors,
        "create: activations/s": round(created),
        "wake: activations/s, median": round(statistics.median(woken)),
        "wake: activations/s, all passes": [round(r) for r in woken],
        "worker RSS, MiB (warm, created, woken)": [round(x[p], 1) for x in (before, after, last) for p in ("worker",)],
        "head RSS, MiB (warm, created, woken)": [round(x[p], 1) for x in (before, after, last) for p in ("head",)],
        "worker bytes per idle actor": round((after["worker"] - before["worker"]) * 2**20 / n),
        "head bytes per actor (state and retained task)": round((after["head"] - before["head"]) * 2**20 / n),
    }
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
