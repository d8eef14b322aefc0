"""Run a cluster node, or look at and drive a cluster, from the Python package:

    python -m agentfleet head [fleet-head flags]      e.g. --listen 0.0.0.0:7070 --token T --join-token J --config fleet.toml
    python -m agentfleet worker [--import MODULE ...] [fleet-worker flags]
                                                      e.g. --head http://HEAD:7070; with --import
                                                      the worker hosts the module's Python agents
                                                      (@agentfleet.agent)
    python -m agentfleet [--head URL] COMMAND ...     the `fleet` command line: status, agents,
                                                      tasks, logs, cancel, submit (--help)
"""

import importlib
import sys

from agentfleet._native import run_cli, run_head, run_worker


def _imports(argv: "list[str]") -> "tuple[list[str], list[str]]":
    """The worker's flags without `--import MODULE` (repeatable; also `--import=MODULE`),
    and the modules."""
    rest: "list[str]" = []
    modules: "list[str]" = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--import":
            if i + 1 >= len(argv):
                raise SystemExit("--import needs a module, e.g. --import mypkg.agents")
            modules.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--import="):
            modules.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, modules


def _worker(argv: "list[str]") -> int:
    rest, modules = _imports(argv)
    if not modules:
        return run_worker(rest)
    from agentfleet import agents

    # Modules are looked up from the current folder too, as `python -m` does for scripts.
    if "" not in sys.path:
        sys.path.insert(0, "")
    for module in modules:
        before = set(agents._names())
        try:
            importlib.import_module(module)
        except Exception as e:
            print(f"agentfleet worker: cannot import {module}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        if set(agents._names()) == before:
            print(f"agentfleet worker: {module} defines no Python agent (@agentfleet.agent)", file=sys.stderr)
            return 2
    host = agents._host_for_worker(agents._names())
    return run_worker(rest, host)


def main(argv: "list[str]") -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv else 2
    if argv[0] == "head":
        return run_head(argv[1:])
    if argv[0] == "worker":
        return _worker(argv[1:])
    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
