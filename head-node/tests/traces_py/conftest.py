"""The suite's processes come from ../fleetproc.py, shared with the other Python suites."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
