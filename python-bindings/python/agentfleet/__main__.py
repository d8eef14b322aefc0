"""Run a cluster node from the Python package:

    python -m agentfleet head [fleet-head flags]      e.g. --listen 0.0.0.0:7070 --config fleet.toml
    python -m agentfleet worker [fleet-worker flags]  e.g. --head http://HEAD:7070
"""

import sys

from agentfleet._native import run_head, run_worker


def main(argv: "list[str]") -> int:
    if len(argv) < 1 or argv[0] not in ("head", "worker"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    role, rest = argv[0], argv[1:]
    return run_head(rest) if role == "head" else run_worker(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
