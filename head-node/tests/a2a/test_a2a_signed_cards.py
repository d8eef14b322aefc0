"""Signed agent cards: a head given --card-signing-key signs every card (a JWS over the
canonical 1.0 card) and serves the public key at /.well-known/jwks.json; the a2a-sdk's own
verifier (a2a.utils.signing) checks the cards with it, through the SDK's card resolver too,
and refuses a card changed after it was signed."""

import asyncio
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from a2a.client import A2ACardResolver
from a2a.client.card_resolver import parse_agent_card
from a2a.types import AgentCard
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from conftest import Cluster
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fleetproc import binary

CARDS = ("/a2a/echo/.well-known/agent-card.json", "/.well-known/agent-card.json")


def key_file(folder: Path, kind: str) -> Path:
    """A private key of `kind` (ec: P-256, or ed25519) as PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else ed25519.Ed25519PrivateKey.generate()
    path = folder / f"{kind}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module", params=["ec", "ed25519"])
def signed(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory() as folder:
        c = Cluster("--card-signing-key", str(key_file(Path(folder), request.param)))
        yield c
        c.stop()


def verifier(base: str) -> Callable[[AgentCard], None]:
    """The SDK's verifier, with the key the head serves (where the signature says it is)."""

    def key(kid: "str | None", jku: "str | None") -> Any:
        assert jku == f"{base}/.well-known/jwks.json", jku
        keys = httpx.get(jku).json()["keys"]
        return jwt.PyJWK(next(k for k in keys if k["kid"] == kid))

    return create_signature_verifier(key, ["ES256", "EdDSA"])


def test_every_card_verifies_with_the_served_key(signed: Cluster) -> None:
    verify = verifier(signed.url)
    for path in CARDS:
        # A 0.3 reader's card carries the 0.3 fields too; 1.0 clients drop them and verify.
        for headers in ({}, {"A2A-Version": "1.0"}):
            data = httpx.get(signed.url + path, headers=headers).json()
            assert len(data["signatures"]) == 1, data
            verify(parse_agent_card(data))

    async def resolve() -> AgentCard:
        async with httpx.AsyncClient() as http:
            return await A2ACardResolver(http, f"{signed.url}/a2a/echo").get_agent_card(signature_verifier=verify)

    assert asyncio.run(resolve()).name == "echo"
    # The same card keeps its signature, so its ETag still answers 304.
    first = httpx.get(signed.url + CARDS[0])
    assert httpx.get(signed.url + CARDS[0], headers={"If-None-Match": first.headers["etag"]}).status_code == 304


def test_a_changed_card_does_not_verify(signed: Cluster) -> None:
    data = httpx.get(signed.url + CARDS[0]).json()
    data["description"] = "a forged description"
    with pytest.raises(InvalidSignaturesError):
        verifier(signed.url)(parse_agent_card(data))


def test_without_a_key_cards_are_unsigned_and_there_is_no_key_set(cluster: Cluster) -> None:
    assert "signatures" not in httpx.get(cluster.url + CARDS[0]).json()
    missing = httpx.get(cluster.url + "/.well-known/jwks.json")
    assert missing.status_code == 404 and "--card-signing-key" in missing.json()["error"]["message"]


def test_a_key_that_cannot_sign_stops_the_head_at_start() -> None:
    with tempfile.TemporaryDirectory() as folder:
        bad = Path(folder) / "bad.pem"
        bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        done = subprocess.run([binary("fleet-head"), "--listen", "127.0.0.1:0", "--store", "memory", "--card-signing-key", str(bad)],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--card-signing-key" in done.stderr, done.stderr
