"""A swarm of agent jobs on an embedded cluster: a head and two workers inside this process.

    python examples/python/swarm.py [--jobs 1000]

Streams one job token by token, then runs the swarm in parallel with a progress bar.
"""

import argparse
import collections
import time

import agentfleet as af


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()

    started = time.perf_counter()
    fleet = af.init(workers=2)
    print(f"cluster ready in {(time.perf_counter() - started) * 1000:.1f} ms: {fleet}")

    writer = fleet.agent("writer", model="builtin:echo", instructions="Repeat the request.")

    print("streaming one job: ", end="", flush=True)
    for event in writer.stream("agents stream their answers word by word"):
        if event.kind == "text_delta":
            print(f"[{event.text}]", end="", flush=True)
    print()

    prompts = [f"job {i} is done" for i in range(args.jobs)]
    started = time.perf_counter()
    results = writer.map(prompts, progress=True)
    elapsed = time.perf_counter() - started
    assert results == prompts, "results came back out of order or wrong"
    print(f"swarm: {len(results)} jobs in {elapsed:.2f} s ({len(results) / elapsed:,.0f} jobs/s)")
    print(f"first results: {results[:3]}")

    per_worker = collections.Counter({w["id"]: w["tasks_assigned"] for w in fleet.status()["workers"]})
    print(f"tasks per worker: {dict(per_worker)}")
    fleet.shutdown()


if __name__ == "__main__":
    main()
