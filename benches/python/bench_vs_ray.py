"""agentfleet's Python API side by side with Ray, same workload, same Python, one run.

    pip install ./python-bindings "ray[default]==2.60.0"      # Ray for this benchmark only
    python benches/python/bench_vs_ray.py [--rounds 5] [--skip-ray]

Measurements (one warm-up, then the median of --rounds rounds):
  a. 10,000 no-op tasks: agentfleet `agent.map` of one-word echo prompts; Ray no-op remote
     tasks submitted and gathered                                              -> tasks/s
  b. 5,000 sequential round trips: `agent.submit(p).result()`; a Ray actor call -> p50 us
  c. a stream of 1,000 events: `agent.stream` of a 1,000-word echo; a Ray streaming
     generator task of 1,000 items -> time to first event (and first text delta), items/s
  d. start-up: `af.init(workers=2)` until both workers joined; `ray.init()`     -> seconds
Both run embedded in this process (agentfleet's head and workers; Ray's local cluster).
"""

import argparse
import json
import os
import statistics
import time

N_TASKS = 10_000
N_SEQ = 5_000
N_STREAM = 1_000


def median_of(fn, rounds):
    fn()
    return [fn() for _ in range(rounds)]


def agentfleet_bench(rounds):
    import agentfleet as af

    inits = []
    for _ in range(rounds):
        started = time.perf_counter()
        fleet = af.init(workers=2)
        inits.append(time.perf_counter() - started)
        fleet.shutdown()

    fleet = af.init(workers=2)
    echo = fleet.agent("echo", model="builtin:echo")
    prompts = ["x"] * N_TASKS

    def tasks():
        started = time.perf_counter()
        out = echo.map(prompts, progress=False)
        assert len(out) == N_TASKS
        return N_TASKS / (time.perf_counter() - started)

    def round_trips():
        times = []
        for _ in range(N_SEQ):
            started = time.perf_counter()
            echo.submit("x").result()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    words = " ".join(f"w{i}" for i in range(N_STREAM))

    def stream():
        started = time.perf_counter()
        first = first_delta = None
        deltas = 0
        for event in echo.stream(words):
            if first is None:
                first = time.perf_counter() - started
            if event.kind == "text_delta":
                deltas += 1
                if first_delta is None:
                    first_delta = time.perf_counter() - started
        total = time.perf_counter() - started
        assert deltas == N_STREAM
        return first * 1e3, first_delta * 1e3, N_STREAM / total

    result = {
        "tasks_per_s": median_of(tasks, rounds),
        "round_trip_p50_us": median_of(round_trips, rounds),
        "stream": median_of(stream, rounds),
        "init_s": inits,
    }
    fleet.shutdown()
    return result


def ray_bench(rounds):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    @ray.remote
    def noop():
        return None

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, x):
            return x

    @ray.remote(num_returns="streaming")
    def stream_items(n):
        for _ in range(n):
            yield b"x" * 32

    inits = []
    for _ in range(rounds):
        started = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR")
        inits.append(time.perf_counter() - started)
        ray.shutdown()

    ray.init(include_dashboard=False, logging_level="ERROR")

    def tasks():
        started = time.perf_counter()
        ray.get([noop.remote() for _ in range(N_TASKS)])
        return N_TASKS / (time.perf_counter() - started)

    actor = Echo.remote()
    ray.get(actor.echo.remote(0))

    def round_trips():
        times = []
        for i in range(N_SEQ):
            started = time.perf_counter()
            ray.get(actor.echo.remote(i))
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    def stream():
        started = time.perf_counter()
        first = None
        n = 0
        for ref in stream_items.remote(N_STREAM):
            ray.get(ref)
            n += 1
            if first is None:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
        return first * 1e3, first * 1e3, n / total

    result = {
        "tasks_per_s": median_of(tasks, rounds),
        "round_trip_p50_us": median_of(round_trips, rounds),
        "stream": median_of(stream, rounds),
        "init_s": inits,
    }
    ray.shutdown()
    return result


def summarize(name, r):
    med = statistics.median
    return {
        "system": name,
        "tasks_per_s": med(r["tasks_per_s"]),
        "round_trip_p50_us": med(r["round_trip_p50_us"]),
        "first_event_ms": med(s[0] for s in r["stream"]),
        "first_delta_ms": med(s[1] for s in r["stream"]),
        "stream_items_per_s": med(s[2] for s in r["stream"]),
        "init_s": med(r["init_s"]),
        "runs": r,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", default=None, help="write all runs as JSON here")
    args = parser.parse_args()

    rows = [summarize("agentfleet", agentfleet_bench(args.rounds))]
    if not args.skip_ray:
        rows.append(summarize("ray", ray_bench(args.rounds)))

    print("| measurement | agentfleet | " + ("Ray 2.60 | ratio | target |" if len(rows) > 1 else "target |"))
    print("|---|---|" + ("---|---|---|" if len(rows) > 1 else "---|"))
    lines = [
        ("10,000 no-op tasks via map (tasks/s)", "tasks_per_s", "{:,.0f}", True, ">= 10x Ray"),
        ("5,000 sequential submit().result(), p50 (us)", "round_trip_p50_us", "{:,.0f}", False, "<= 1/5 of Ray"),
        ("stream of 1,000 events: first event (ms)", "first_event_ms", "{:.2f}", False, "<= 1/5 of Ray"),
        ("stream of 1,000 events: first text delta (ms)", "first_delta_ms", "{:.2f}", False, "-"),
        ("stream of 1,000 events: items/s", "stream_items_per_s", "{:,.0f}", True, "-"),
        ("init with 2 workers until ready (s)", "init_s", "{:.3f}", False, "<= 1/10 of Ray"),
    ]
    for label, key, fmt, higher_better, target in lines:
        ours = rows[0][key]
        cells = [fmt.format(ours)]
        if len(rows) > 1:
            theirs = rows[1][key]
            ratio = ours / theirs if higher_better else theirs / ours
            cells += [fmt.format(theirs), f"{ratio:.1f}x better" if ratio >= 1 else f"{1 / ratio:.1f}x worse"]
        print(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
