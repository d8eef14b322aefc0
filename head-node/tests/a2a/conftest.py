"""A real fleet-head and fleet-worker (separate processes) for the A2A tests."""

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CONFIG = """
[[agent]]
name = "echo"
model = "builtin:echo"
description = "repeats what you say"

[[agent]]
name = "slow"
model = "builtin:echo"
model_options = { token_delay_ms = 40 }
"""


def binary(name: str) -> str:
    for base in (os.environ.get("FLEET_BIN_DIR"), os.environ.get("CARGO_TARGET_DIR") and os.environ["CARGO_TARGET_DIR"] + "/release"):
        if base and (Path(base) / name).is_file():
            return str(Path(base) / name)
    root = Path(__file__).resolve().parents[3]
    candidate = root / "target" / "release" / name
    assert candidate.is_file(), f"build {name} first (cargo build --release --bins) or set FLEET_BIN_DIR"
    return str(candidate)


class Cluster:
    def __init__(self, *head_args: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        config = Path(self.dir.name) / "fleet.toml"
        config.write_text(CONFIG)
        env = dict(os.environ, RUST_LOG="warn", FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")  # the workers' mesh on loopback only
        env.pop("FLEET_TOKEN", None)
        env.pop("FLEET_API_KEY", None)
        self.head = subprocess.Popen(
            [binary("fleet-head"), "--listen", "127.0.0.1:0", "--print-address", "--config", str(config), *head_args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.head.stdout is not None
        line = self.head.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = "http://" + line.removeprefix("listening on ").strip()
        self.worker = subprocess.Popen([binary("fleet-worker"), "--head", self.url], env=env)
        deadline = time.monotonic() + 15
        while httpx.get(self.url + "/healthz?min_workers=1").status_code != 200:
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.02)

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


@pytest.fixture(scope="module")
def keyed_cluster() -> Iterator[Cluster]:
    c = Cluster("--api-key", "k3y")
    yield c
    c.stop()
