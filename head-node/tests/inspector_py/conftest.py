"""The suite's processes come from ../fleetproc.py, shared with the other Python suites."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleetproc import collect_garbage_after_each_test  # noqa: E402,F401
