"""Submit jobs to a cluster running on other machines.

On the head machine:     python -m agentfleet head --token change-me --join-token join-secret
On each worker machine:  python -m agentfleet worker --head http://HEAD:7070 --join-token join-secret
Then, anywhere:          python examples/python/multi_machine.py http://HEAD:7070 --token change-me
"""

import argparse

import agentfleet as af


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="the head's URL, e.g. http://10.0.0.1:7070")
    parser.add_argument("--token", default=None, help="the client token (default: $FLEET_TOKEN)")
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()

    fleet = af.init(args.address, token=args.token)
    status = fleet.status()
    print(f"connected to {fleet.address}: {len(status['workers'])} workers")
    for worker in status["workers"]:
        print(f"  {worker['id']} ({worker['hostname']}): {worker['resources']}, models {worker['models']}")

    agent = fleet.agent("echo", model="builtin:echo")
    results = agent.map([f"job {i}" for i in range(args.jobs)])
    print(f"{len(results)} jobs done; last: {results[-1]!r}")

    task = agent.submit("a task you can follow and cancel")
    print(f"task {task.id}: {task.result(timeout=30)!r}")


if __name__ == "__main__":
    main()
