"""The console commands a pip install gives: ``fleet-head``, ``fleet-worker`` and ``fleet``
(``[project.scripts]`` in pyproject.toml), and ``python -m agentfleet head|worker|...``.

Each runs the same code as the binaries of the same name, inside the extension, so one
install is a whole node: ``fleet-head --listen 0.0.0.0:7070``, ``fleet-worker --head
http://HEAD:7070``, ``fleet status``. ``fleet-worker --import MODULE`` also hosts the
module's Python agents (``@agentfleet.agent``), which the standalone binary cannot.
"""

import importlib
import signal
import sys
import threading
from typing import Any, Callable, Optional

from agentfleet._native import _run_cli as run_cli
from agentfleet._native import _run_head as run_head
from agentfleet._native import _run_worker as run_worker


def _native(command: "Callable[..., int]", *args: Any) -> int:
    """Runs a command of the extension as the binaries run: Ctrl-C goes to it (a node stops
    cleanly and exits 0, `fleet follow` ends), not to Python, whose own handler would only
    raise KeyboardInterrupt once the command had returned."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return command(*args)


def head_main(argv: "list[str]") -> int:
    """`fleet-head` with `argv` (without the program name); returns the exit code."""
    return _native(run_head, argv)


def fleet_main(argv: "list[str]") -> int:
    """`fleet` with `argv` (without the program name); returns the exit code."""
    return _native(run_cli, argv)


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


def worker_main(argv: "list[str]") -> int:
    """`fleet-worker` with `argv` (without the program name); returns the exit code."""
    rest, modules = _imports(argv)
    if not modules:
        return _native(run_worker, rest)
    from agentfleet import agents

    # Modules are looked up from the current folder too, as `python -m` does for scripts.
    if "" not in sys.path:
        sys.path.insert(0, "")
    for module in modules:
        before = set(agents._names())
        try:
            importlib.import_module(module)
        except Exception as e:
            print(f"fleet-worker: cannot import {module}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        if set(agents._names()) == before:
            print(f"fleet-worker: {module} defines no Python agent (@agentfleet.agent)", file=sys.stderr)
            return 2
    host = agents._host_for_worker(agents._names())
    return _native(run_worker, rest, host)


def _argv(argv: "Optional[list[str]]") -> "list[str]":
    return sys.argv[1:] if argv is None else argv


def head(argv: "Optional[list[str]]" = None) -> None:
    """The `fleet-head` console command."""
    sys.exit(head_main(_argv(argv)))


def worker(argv: "Optional[list[str]]" = None) -> None:
    """The `fleet-worker` console command (with `--import MODULE` for Python agents)."""
    sys.exit(worker_main(_argv(argv)))


def fleet(argv: "Optional[list[str]]" = None) -> None:
    """The `fleet` console command: status, agents, tasks, logs, cancel, submit, ..."""
    sys.exit(fleet_main(_argv(argv)))
