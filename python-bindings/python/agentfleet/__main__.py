"""Run a cluster node, or look at and drive a cluster, from the Python package (the same as
the console commands `fleet-head`, `fleet-worker` and `fleet` a pip install puts on PATH):

    python -m agentfleet head [fleet-head flags]      e.g. --listen 0.0.0.0:7070 --token T --join-token J --config fleet.toml
    python -m agentfleet worker [--import MODULE ...] [fleet-worker flags]
                                                      e.g. --head http://HEAD:7070; with --import
                                                      the worker hosts the module's Python agents
                                                      (@agentfleet.agent)
    python -m agentfleet [--head URL] COMMAND ...     the `fleet` command line: status, agents,
                                                      tasks, logs, cancel, submit (--help)
"""

import sys

from agentfleet._cli import fleet_main, head_main, worker_main


def main(argv: "list[str]") -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv else 2
    if argv[0] == "head":
        return head_main(argv[1:])
    if argv[0] == "worker":
        return worker_main(argv[1:])
    return fleet_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
