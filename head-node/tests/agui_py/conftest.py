"""A real fleet-head and fleet-worker (separate processes, from ../fleetproc.py) serving
echo agents and SmolLM2-135M-Instruct, whose agents the AG-UI tests run through
`/agui/{agent}`: with the official `@ag-ui/client` in Node (client.cjs) and with the
`ag-ui-protocol` package's event models in Python."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleetproc import SMOLLM2, Fleet, clean_env, collect_garbage_after_each_test, smollm2_gguf  # noqa: E402,F401

# `builtin:echo` repeats its input; a `<tool_call>` in it is a call of that tool, and after
# the tool's result its next reply is that result.
CONFIG = """
[[agent]]
name = "echo"
model = "builtin:echo"

[[agent]]
name = "asker"
model = "builtin:echo"
ask_user = true

[[agent]]
name = "helper"
model = "builtin:echo"

[[agent]]
name = "guarded"
model = "builtin:echo"
tools = ["helper"]
requires_approval = ["helper"]

# Tools of its own beside the frontend tools a client declares.
[[agent]]
name = "toolful"
model = "builtin:echo"
tools = ["helper"]

[[agent]]
name = "slow"
model = "builtin:echo"
model_options = { token_delay_ms = 100 }

# The worker cannot load this model (the option is not a number): its tasks fail.
[[agent]]
name = "broken"
model = "builtin:echo"
model_options = { token_delay_ms = "soon" }

[[agent]]
name = "smol"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
instructions = "You are a helpful assistant. Answer in one short sentence."
sampling = { max_tokens = 40, temperature = 0.0 }
"""

CLIENT_SCRIPT = Path(__file__).with_name("client.cjs")


def node_modules() -> Path:
    """$AGUI_NODE_MODULES: a node_modules with @ag-ui/client (scripts/test.sh installs it
    from npm into the cache)."""
    path = Path(os.environ.get("AGUI_NODE_MODULES") or Path.home() / ".cache/agentfleet/agui-node/node_modules")
    assert (path / "@ag-ui" / "client").is_dir(), f"{path}: npm install @ag-ui/client@1.0.0 there (scripts/test.sh does)"
    return path


class Cluster(Fleet):
    """The head with CONFIG and one worker whose models dir holds SmolLM2."""

    def __init__(self, *head_args: str) -> None:
        self.models = tempfile.TemporaryDirectory()
        (Path(self.models.name) / SMOLLM2).symlink_to(smollm2_gguf())
        super().__init__(CONFIG, *head_args, workers=[["--models-dir", self.models.name]], env=clean_env())

    def node(self, scenario: str, agent: str, *args: str, timeout: float = 60) -> Any:
        """Runs client.cjs's `scenario` against `agent` with the official client; its last
        stdout line is the JSON the scenario saw."""
        node = shutil.which("node") or shutil.which("nodejs")
        assert node, "Node is missing: apt-get install nodejs npm (scripts/system-packages.sh does)"
        env = {**os.environ, "NODE_PATH": str(node_modules()), "NODE_ENV": "test"}
        url = f"{self.url}/agui/{agent}"
        done = subprocess.run([node, str(CLIENT_SCRIPT), scenario, url, *args], capture_output=True, text=True, timeout=timeout, env=env)
        assert done.returncode == 0, f"client.cjs {scenario} failed:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        super().stop()
        self.models.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.stop()
