"""A real fleet-head and fleet-worker (separate processes) for the A2A tests."""

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
    def __init__(self, *head_args: str, tls: "tuple[Path, Path, Path] | None" = None) -> None:
        """A head with `head_args` and one worker; with `tls` (CA, certificate, key) the head
        serves https:// and `self.verify` trusts its CA."""
        self.dir = tempfile.TemporaryDirectory()
        self.verify: "ssl.SSLContext | bool" = True
        worker_args: list[str] = []
        if tls is not None:
            ca, cert, key = tls
            head_args = (*head_args, "--tls-cert", str(cert), "--tls-key", str(key))
            worker_args = ["--tls-ca", str(ca)]
            self.verify = ssl.create_default_context(cafile=str(ca))
        config = Path(self.dir.name) / "fleet.toml"
        config.write_text(CONFIG)
        env = dict(os.environ, RUST_LOG="warn", FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")  # the workers' mesh on loopback only
        env.pop("FLEET_TOKEN", None)
        env.pop("FLEET_API_KEY", None)
        env["FLEET_DATA_DIR"] = tempfile.mkdtemp(prefix="fleet-head-")  # one store per head
        # Workers join with their own token, as in a real deployment (both read the variable).
        env["FLEET_JOIN_TOKEN"] = secrets.token_hex(16)
        self.head_command = [binary("fleet-head"), "--print-address", "--config", str(config), *head_args]
        self.env = env
        self.head = self._start_head("127.0.0.1:0")
        assert self.head.stdout is not None
        line = self.head.stdout.readline()
        assert line.startswith("listening on "), line
        self.address = line.removeprefix("listening on ").strip()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{self.address}"
        self.worker = subprocess.Popen([binary("fleet-worker"), "--head", self.url, *worker_args], env=env)
        self._wait_for_worker()

    def _start_head(self, listen: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.head_command, "--listen", listen], stdout=subprocess.PIPE, text=True, env=self.env)

    def _wait_for_worker(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(self.url + "/healthz?min_workers=1", verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # A restarted head not listening yet.
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.02)

    def restart_head(self) -> None:
        """SIGKILLs the head and starts it again on its address and data; returns once the
        worker has joined it again."""
        self.head.kill()
        self.head.wait(timeout=10)
        if self.head.stdout is not None:
            self.head.stdout.close()
        self.head = self._start_head(self.address)
        self._wait_for_worker()

    def stop(self) -> None:
        for proc in (self.worker, self.head):
            proc.kill()
            proc.wait(timeout=10)
        if self.head.stdout is not None:
            self.head.stdout.close()
        self.dir.cleanup()


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made for this test run and a server certificate it signs for localhost and
    127.0.0.1 (openssl's command line): returns the CA, the certificate and its key."""
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "srv.pem", "srv.key", "srv.csr"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=agentfleet test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext = folder / "srv.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return ca, cert, key


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[Path, Path, Path]]:
    with tempfile.TemporaryDirectory() as folder:
        yield make_tls(Path(folder))


@pytest.fixture(scope="module")
def cluster(tls: tuple[Path, Path, Path]) -> Iterator[Cluster]:
    # The tests' webhooks listen on 127.0.0.1, which a head refuses unless allowed.
    c = Cluster("--allow-private-webhooks", "--webhook-ca", str(tls[0]))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tls_cluster(tls: tuple[Path, Path, Path]) -> Iterator[Cluster]:
    """A head serving A2A over TLS, with a certificate from the test CA."""
    c = Cluster(tls=tls)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def keyed_cluster() -> Iterator[Cluster]:
    c = Cluster("--api-key", "k3y")
    yield c
    c.stop()
