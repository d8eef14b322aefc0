"""agentfleet: submit parallel agent jobs to an agentfleet cluster from Python.

    import agentfleet as af

    fleet = af.init()                                   # embedded head + 2 local workers
    echo = fleet.agent("echo", model="builtin:echo")
    print(echo.map(["hello", "world"]))                 # parallel, results in order
    for event in echo.stream("one two three"):          # events as they arrive
        print(event.kind, event.text)

`af.init("http://head:7070", token=...)` connects to a running cluster instead.
"""

from agentfleet._native import (
    Agent,
    AsyncEventIterator,
    Cancelled,
    Event,
    EventIterator,
    FailedPrecondition,
    Fleet,
    FleetError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Task,
    TaskFailed,
    Unauthenticated,
    Unavailable,
    __version__,
)
from agentfleet._native import init as _init

__all__ = [
    "Agent",
    "AsyncEventIterator",
    "Cancelled",
    "Event",
    "EventIterator",
    "FailedPrecondition",
    "Fleet",
    "FleetError",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Task",
    "TaskFailed",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "init",
]


def init(
    address: "str | None" = None,
    *,
    workers: int = 2,
    models_dir: "str | None" = None,
    token: "str | None" = None,
) -> Fleet:
    """Start an embedded cluster (no ``address``) or connect to a running one.

    The embedded cluster (a head and ``workers`` local workers inside this process) stops
    at interpreter exit or on ``fleet.shutdown()``. ``token`` defaults to $FLEET_TOKEN.
    """
    import atexit

    fleet = _init(address, workers=workers, models_dir=models_dir, token=token)
    if fleet.embedded:
        atexit.register(fleet.shutdown)
    return fleet
