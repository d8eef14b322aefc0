"""Python tool calls: agent -> a function in the registering process -> agent.

    pip install ./python-bindings
    python benches/python/tool_calls.py --rounds 5

Measures, on an embedded cluster (head and 2 workers in this process) and on a running one
(`python -m agentfleet head` and `worker` as processes, this process connected by address):

- round trip of one call, p50 and p99: from the agent's `ToolCall` event to its `ToolResult`
  (both stamped by the worker: the call goes up to the head, to this process's tool, back
  to the head and down to the worker); tasks one after another;
- calls/s with 1,000 tasks in flight, each making one call (`map`);
- beside them, the same through an agent called as a tool (a sub-task on the cluster).

The agent runs `builtin:echo`, told to write the call, so the figures are the tool path's
own, not a model's. One warm-up round, then the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import agentfleet as af


def call(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def round_trips(agent: af.Agent, prompt: str, n: int) -> list[float]:
    """Microseconds from each task's ToolCall event to its ToolResult, tasks in sequence."""
    out = []
    for _ in range(n):
        task = agent.submit(prompt)
        task.result(timeout=30)
        stamps = {e.kind: e.timestamp_us for e in task.events() if e.kind in ("tool_call", "tool_result")}
        out.append(stamps["tool_result"] - stamps["tool_call"])
    return out


def calls_per_s(agent: af.Agent, prompt: str, n: int) -> float:
    started = time.perf_counter()
    results = agent.map([prompt] * n, progress=False)
    took = time.perf_counter() - started
    assert len(results) == n
    return n / took


def measure(fleet: af.Fleet, label: str, rounds: int, sequential: int, parallel: int) -> dict:
    @fleet.tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    fleet.agent(f"helper-{label}", model="builtin:echo")
    python_tool = fleet.agent(f"calc-{label}", model="builtin:echo", tools=[add])
    agent_tool = fleet.agent(f"asker-{label}", model="builtin:echo", tools=[f"helper-{label}"])
    cases = {
        "python tool": (python_tool, call("add", '{"a": 20, "b": 22}')),
        "agent as a tool": (agent_tool, call(f"helper-{label}", '{"input": "42"}')),
    }
    figures: dict = {}
    for case, (agent, prompt) in cases.items():
        round_trips(agent, prompt, 200)  # warm-up
        calls_per_s(agent, prompt, parallel)
        p50s, p99s, rates = [], [], []
        for _ in range(rounds):
            trips = sorted(round_trips(agent, prompt, sequential))
            p50s.append(statistics.median(trips))
            p99s.append(trips[int(len(trips) * 0.99) - 1])
            rates.append(calls_per_s(agent, prompt, parallel))
        figures[case] = {
            "p50_us": statistics.median(p50s),
            "p99_us": statistics.median(p99s),
            "calls_per_s": statistics.median(rates),
            "rounds": {"p50_us": p50s, "p99_us": p99s, "calls_per_s": rates},
        }
        print(f"{label:8} {case:16} p50 {figures[case]['p50_us']:7.0f} µs  p99 {figures[case]['p99_us']:7.0f} µs  "
              f"{figures[case]['calls_per_s']:9.0f} calls/s", flush=True)
    return figures


class Node:
    def __init__(self, *args: str) -> None:
        env = dict(os.environ, RUST_LOG="warn", FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")
        env["FLEET_DATA_DIR"] = tempfile.mkdtemp(prefix="fleet-bench-head-")
        self.proc = subprocess.Popen([sys.executable, "-m", "agentfleet", *args], stdout=subprocess.PIPE, text=True, env=env)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=1000)
    parser.add_argument("--out")
    args = parser.parse_args()
    results = {}
    with af.init(workers=2) as fleet:
        results["embedded"] = measure(fleet, "embedded", args.rounds, args.sequential, args.parallel)
    head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--token", "bench", "--join-token", "j")
    assert head.proc.stdout is not None
    address = "http://" + head.proc.stdout.readline().removeprefix("listening on ").strip()
    workers = [Node("worker", "--head", address, "--join-token", "j") for _ in range(2)]
    try:
        fleet = af.init(address, token="bench")
        deadline = time.monotonic() + 30
        while len(fleet.status()["workers"]) < 2:
            assert time.monotonic() < deadline, "the workers did not join"
            time.sleep(0.05)
        results["remote"] = measure(fleet, "remote", args.rounds, args.sequential, args.parallel)
        fleet.shutdown()
    finally:
        for node in [*workers, head]:
            node.stop()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
