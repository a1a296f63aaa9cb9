"""Key pair files, the signed-token challenge flow, static credentials, and push to a fake registry."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from corral.errors import UnauthorizedError
from corral.names import ModelName
from corral.registry.auth import Credentials, ensure_keypair, load_keypair, parse_challenge
from corral.registry.client import RegistryOptions, RetryPolicy
from corral.registry.pull import pull_model
from corral.registry.push import push_model
from corral.store.manifests import Layer, Manifest
from corral.store.store import Store
from tests.registry_fake import FakeRegistry, digest_of

MODEL = "application/vnd.ollama.image.model"
FAST = RetryPolicy(attempts=2, base=0.01)


@pytest.fixture
def reg() -> Iterator[FakeRegistry]:
    with FakeRegistry() as r:
        yield r


def test_keypair_created_once_in_openssh_format(tmp_path: Path) -> None:
    pair, created = ensure_keypair(tmp_path)
    assert created
    text = (tmp_path / "id_ed25519").read_text()
    assert text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE((tmp_path / "id_ed25519").stat().st_mode) == 0o600
    assert (tmp_path / "id_ed25519.pub").read_text().startswith("ssh-ed25519 AAAA")
    again, created2 = ensure_keypair(tmp_path)
    assert not created2 and again.public_line == pair.public_line == load_keypair(tmp_path).public_line


def test_parse_challenge() -> None:
    ch = parse_challenge('Bearer realm="https://r.example/token",service="svc",scope="repository:a/b:pull"')
    assert ch is not None
    assert (ch.realm, ch.service, ch.scope) == ("https://r.example/token", "svc", "repository:a/b:pull")
    assert parse_challenge('Basic realm="x"') is None


def _raw_public(home: Path) -> bytes:
    return load_keypair(home).private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_pull_answers_the_signed_token_challenge(tmp_path: Path, reg: FakeRegistry) -> None:
    pair, _ = ensure_keypair(tmp_path / "home")
    reg.add_model("library/m:1", b"{}", [(MODEL, b"weights" * 100)])
    reg.faults.require_token = True
    reg.faults.public_key = _raw_public(tmp_path / "home")
    opts = RegistryOptions(insecure=True, keypair=pair, retry=FAST)
    statuses = [p.status for p in pull_model(Store(tmp_path / "s"), ModelName.parse(f"{reg.host}/library/m:1"), opts)]
    assert statuses[-1] == "success"
    assert reg.token_requests and reg.token_requests[0]["ok"]
    q = reg.token_requests[0]["query"]
    assert q["service"] == ["fake"] and "nonce" in q and "ts" in q


def test_wrong_key_is_unauthorized(tmp_path: Path, reg: FakeRegistry) -> None:
    ensure_keypair(tmp_path / "a")
    other, _ = ensure_keypair(tmp_path / "b")
    reg.add_model("library/m:1", b"{}", [(MODEL, b"w")])
    reg.faults.require_token = True
    reg.faults.public_key = _raw_public(tmp_path / "a")
    opts = RegistryOptions(insecure=True, keypair=other, retry=FAST)
    with pytest.raises(UnauthorizedError):
        list(pull_model(Store(tmp_path / "s"), ModelName.parse(f"{reg.host}/library/m:1"), opts))


def test_static_credentials_headers() -> None:
    assert Credentials(token="t").header() == "Bearer t"
    assert Credentials(username="u", password="p").header() == "Basic dTpw"
    assert Credentials().header() is None


def _stored_model(store: Store, name: ModelName, weights: bytes) -> bytes:
    cfg_digest, cfg_size = store.blobs.add_bytes(b'{"model_format":"gguf"}')
    w_digest, w_size = store.blobs.add_bytes(weights)
    manifest = Manifest(config=Layer("application/vnd.docker.container.image.v1+json", cfg_digest, cfg_size),
                        layers=[Layer(MODEL, w_digest, w_size)])
    store.write_manifest(name, manifest)
    return store.read_manifest(name)[1]


def test_push_uploads_chunks_then_manifest(tmp_path: Path, reg: FakeRegistry) -> None:
    store = Store(tmp_path)
    name = ModelName.parse(f"{reg.host}/me/m:1")
    weights = bytes(range(256)) * 1000
    raw = _stored_model(store, name, weights)
    opts = RegistryOptions(insecure=True, retry=FAST)
    events = list(push_model(store, name, opts, chunk_size=100_000))
    statuses = [e.status for e in events]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert f"pushing {digest_of(weights)[7:19]}" in statuses
    assert reg.blobs[digest_of(weights)] == weights
    assert reg.manifests["me/m:1"] == raw
    assert len(reg.requests("PATCH")) == 3 + 1  # 256000 bytes in 100 kB chunks, plus the config
    reg.log.clear()
    list(push_model(store, name, opts))
    assert not reg.requests("POST") and not reg.requests("PATCH")  # blobs already there
