"""A real fleet-head and fleet-worker (separate processes, from ../fleetproc.py) whose agents
the MCP tests list and call through the head's /mcp."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleetproc import Fleet, collect_garbage_after_each_test  # noqa: E402,F401

CONFIG = """
[[agent]]
name = "echo"
model = "builtin:echo"
description = "says back what it is told"

[[agent]]
name = "slow"
model = "builtin:echo"
model_options = { token_delay_ms = 200 }

# The worker cannot load this model (the option is not a number): its tasks fail.
[[agent]]
name = "broken"
model = "builtin:echo"
model_options = { token_delay_ms = "soon" }

# No worker has this file: no task of it can ever be scheduled.
[[agent]]
name = "nowhere"
model = "missing.gguf"
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Fleet]:
    c = Fleet(CONFIG)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def keyed_cluster() -> Iterator[Fleet]:
    c = Fleet(CONFIG, "--api-key", "k3y")
    yield c
    c.stop()
