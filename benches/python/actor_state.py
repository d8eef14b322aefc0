"""Virtual actors (`@af.agent(state=True)`): what stored state costs a task, one run.

The issue's targets: `ctx.state` load + store <= 200 us per task with the file store, and
>= 20,000 actor activations/s on one Python worker (Ray's many_actors: 551 actors/s).

A `fleet-head` process with its default file store (a temporary data dir, `--fsync
periodic`) and one `python -m agentfleet worker --import MODULE` process on 127.0.0.1; this
process `map`s the tasks, each with its own context (`context_id=[...]`, one per input). The agents, written to a module
in a temporary folder:

    @af.agent(name="plain")                            # no stored state
    async def plain(task, ctx):
        return task.input

    @af.agent(name="actor", state=True, per_context=True)
    async def actor(task, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return task.input

Cases (one warm-up, then the median of --rounds rounds; --tasks tasks a round):
  a. plain: each task its own context                                        -> tasks/s
  b. actor, first activations: each task a new key (loads {}, stores {"n":1})  -> activations/s
  c. actor, again: 10 tasks on each of tasks/10 keys, stored before (loads, stores; a key's
     tasks run one at a time)                                                -> activations/s
The cost of the state per task is (1/b - 1/a) of wall time, and the head's and worker's CPU
per task beside it (from /proc). Every process started is stopped at the end.

    python benches/python/actor_state.py --rounds 5 --out actor_state.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# The same process handling as the Python agents' benchmark beside this one.
from python_agents_vs_ray import agents_cluster

MODULE = "actor_bench_agents"
AGENTS = '''
import agentfleet as af


@af.agent(name="plain")
async def plain(task, ctx):
    return task.input


@af.agent(name="actor", state=True, per_context=True)
async def actor(task, ctx):
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return task.input
'''
def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    agents, fleet, head, (worker,) = agents_cluster("fleet-actor-bench-", MODULE, AGENTS, 1)
    plain, actor = fleet.agent(agents.plain), fleet.agent(agents.actor)
    counter = iter(range(10**9))

    def run(agent, keys: list[str]) -> tuple[float, float, float]:
        """One task per key (`map`, each in its own context); (tasks/s, head and worker CPU
        us per task)."""
        before = (cpu_s(head.pid), cpu_s(worker.pid))
        started = time.perf_counter()
        answers = agent.map(keys, context_id=keys, progress=False)
        took = time.perf_counter() - started
        assert answers == keys, "wrong answers"
        after = (cpu_s(head.pid), cpu_s(worker.pid))
        n = len(keys)
        return n / took, (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6

    def fresh(n: int) -> list[str]:
        return [f"k{next(counter)}" for _ in range(n)]

    stored_keys = fresh(args.tasks // 10)
    run(actor, stored_keys)  # their states exist from now on
    cases = {
        "a. plain: tasks/s": lambda: run(plain, fresh(args.tasks)),
        "b. actor, first activations: activations/s": lambda: run(actor, fresh(args.tasks)),
        "c. actor, stored state (10 per key): activations/s": lambda: run(actor, stored_keys * 10),
    }
    results: dict[str, dict] = {}
    for name, case in cases.items():
        case()  # warm-up
    for _ in range(args.rounds):
        for name, case in cases.items():  # in turns: the machine's drift hits each alike
            rate, head_us, worker_us = case()
            r = results.setdefault(name, {"rates": [], "head_cpu_us": [], "worker_cpu_us": []})
            r["rates"].append(round(rate))
            r["head_cpu_us"].append(round(head_us, 1))
            r["worker_cpu_us"].append(round(worker_us, 1))
    for r in results.values():
        r["median"] = statistics.median(r["rates"])
        r["head_cpu_us_median"] = statistics.median(r["head_cpu_us"])
        r["worker_cpu_us_median"] = statistics.median(r["worker_cpu_us"])
    a, b, c = (results[k]["median"] for k in cases)
    results["state cost per task, wall us (1/b - 1/a)"] = {"median": round((1 / b - 1 / a) * 1e6, 1)}
    results["state cost per task, wall us (1/c - 1/a)"] = {"median": round((1 / c - 1 / a) * 1e6, 1)}

    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
