"""A real fleet-head and fleet-worker (separate processes) for the A2A tests."""

import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from a2a.client import ClientConfig, ClientFactory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleetproc import Fleet, clean_env, collect_garbage_after_each_test  # noqa: E402,F401

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


def grpc_channel(url: str, ca: "Path | None" = None):  # type: ignore[no-untyped-def]
    """A gRPC channel to the host and port of a card's GRPC interface URL (grpcio takes
    `host:port`, the card names `scheme://host:port`); over TLS trusting `ca` when given."""
    import grpc

    target = urlparse(url).netloc
    if ca is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()))


async def sdk_client(base_url: str, agent: str, mode: str, streaming: bool = True, **config: object):  # type: ignore[no-untyped-def]
    """The official SDK's client of `agent`, built from its card as users build it: `mode`
    "1.0" or "0.3" over JSON-RPC, or "grpc" (A2A 1.0's gRPC binding, the card's GRPC
    interface with its tenant)."""
    if mode == "grpc":
        config.setdefault("grpc_channel_factory", grpc_channel)
        factory = ClientFactory(ClientConfig(streaming=streaming, supported_protocol_bindings=["GRPC"], **config))  # type: ignore[arg-type]
        return await factory.create_from_url(f"{base_url}/a2a/{agent}")
    factory = ClientFactory(ClientConfig(streaming=streaming, supported_protocol_bindings=["JSONRPC"], **config))  # type: ignore[arg-type]
    suffix = "" if mode == "1.0" else "/v0.3"
    return await factory.create_from_url(f"{base_url}/a2a/{agent}{suffix}")


class Cluster(Fleet):
    def __init__(self, *head_args: str, tls: "tuple[Path, Path, Path] | None" = None) -> None:
        """A head with `head_args` and one worker; with `tls` (CA, certificate, key) the head
        serves https:// and `self.verify` trusts its CA."""
        verify: "ssl.SSLContext | bool" = True
        worker_args: list[str] = []
        if tls is not None:
            ca, cert, key = tls
            head_args = (*head_args, "--tls-cert", str(cert), "--tls-key", str(key))
            worker_args = ["--tls-ca", str(ca)]
            verify = ssl.create_default_context(cafile=str(ca))
        env = clean_env(FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")  # the workers' mesh on loopback only
        scheme = "https" if tls is not None else "http"
        super().__init__(CONFIG, *head_args, workers=[worker_args], env=env, scheme=scheme, verify=verify)
        self.tls_ca = tls[0] if tls is not None else None


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
    # The tests' webhooks listen on 127.0.0.1, which a head refuses unless allowed; the
    # card tests ask for the head by names a reverse proxy would send, which a loopback
    # head refuses unless allowed.
    c = Cluster("--allow-private-webhooks", "--webhook-ca", str(tls[0]),
                "--allowed-host", "example.com", "--allowed-host", "a.example")
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
