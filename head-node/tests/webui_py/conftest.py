"""A real fleet-head and fleet-worker (separate processes, from ../fleetproc.py) serving
echo agents and SmolLM2-135M-Instruct, for the doors web frontends use: AG-UI
(`/agui/{agent}`), with the official `@ag-ui/client` in Node (agui_client.cjs) and the
`ag-ui-protocol` package's event models in Python; and the Vercel AI SDK's UI message stream
(`/ai-sdk/{agent}`), with the `ai` package's own client side in Node (aisdk_chat.cjs)."""

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

# Its questions wait one second.
[[agent]]
name = "hasty"
model = "builtin:echo"
ask_user = true
input_timeout_s = 1

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

HERE = Path(__file__).parent


def node_modules() -> Path:
    """$WEBUI_NODE_MODULES: a node_modules with @ag-ui/client and ai (scripts/test.sh
    installs them from npm into the cache)."""
    path = Path(os.environ.get("WEBUI_NODE_MODULES") or Path.home() / ".cache/agentfleet/webui-node/node_modules")
    for package in ("@ag-ui/client", "ai", "@agentclientprotocol/sdk"):
        assert (path / package).is_dir(), f"{path}: npm install @ag-ui/client@1.0.0 ai@7.0.173 @agentclientprotocol/sdk@2.4.0 there (scripts/test.sh does)"
    return path


def node(script: str, *args: str, timeout: float = 60) -> Any:
    """Runs the Node `script` beside this file; its last stdout line is the JSON it saw."""
    binary = shutil.which("node") or shutil.which("nodejs")
    assert binary, "Node is missing: apt-get install nodejs npm (scripts/system-packages.sh does)"
    env = {**os.environ, "NODE_PATH": str(node_modules()), "NODE_ENV": "test"}
    done = subprocess.run([binary, str(HERE / script), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{script} {args[:1]} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


class Cluster(Fleet):
    """The head with CONFIG and one worker whose models dir holds SmolLM2."""

    def __init__(self, *head_args: str) -> None:
        self.models = tempfile.TemporaryDirectory()
        (Path(self.models.name) / SMOLLM2).symlink_to(smollm2_gguf())
        super().__init__(CONFIG, *head_args, workers=[["--models-dir", self.models.name]], env=clean_env())

    def node(self, scenario: str, agent: str, *args: str, timeout: float = 60) -> Any:
        """Runs agui_client.cjs's `scenario` against `agent` with the official AG-UI client."""
        return node("agui_client.cjs", scenario, f"{self.url}/agui/{agent}", *args, timeout=timeout)

    def chat(self, agent: str, messages: list[dict[str, Any]], api_key: str = "", tools: "list[dict[str, Any]] | None" = None) -> Any:
        """Sends `messages` (UI messages) to `agent` with the AI SDK's transport; what it read."""
        extra = [json.dumps(tools)] if tools is not None else []
        return node("aisdk_chat.cjs", f"{self.url}/ai-sdk/{agent}", json.dumps(messages), api_key, *extra)

    def stop(self) -> None:
        super().stop()
        self.models.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def keyed() -> Iterator[Cluster]:
    """A head that wants the client key `k3y` at every door."""
    c = Cluster("--api-key", "k3y")
    yield c
    c.stop()
