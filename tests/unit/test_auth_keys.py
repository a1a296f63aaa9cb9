"""API keys: hashed at rest, file mode, verification, revocation, scope parsing and implication."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from corral.auth.keys import KeyStore, hash_key
from corral.auth.scopes import allows, parse_scopes, required_scope
from corral.errors import BadRequestError, NotFoundError


def test_create_stores_only_the_hash_with_mode_0600(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    assert not store.has_keys()
    record, plain = store.create("infer,read", name="alice")
    text = (tmp_path / "keys.json").read_text()
    assert plain not in text
    assert plain.startswith(f"crl_{record.id}_")
    assert json.loads(text)["keys"][0]["hash"] == hash_key(plain)
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert record.scopes == ("read", "infer")
    assert store.has_keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]  # no temp file left


def test_verify_accepts_the_key_and_rejects_tampering(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, plain = store.create("manage")
    assert store.verify(plain) == record
    assert store.verify(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert store.verify("crl_" + "0" * 12 + "_whatever") is None
    assert store.verify("not-a-key") is None


def test_second_store_sees_changes_made_by_another(tmp_path: Path) -> None:
    """The server's KeyStore notices keys created/revoked by the CLI's KeyStore."""
    server, cli = KeyStore(tmp_path / "keys.json"), KeyStore(tmp_path / "keys.json")
    assert not server.has_keys()
    record, plain = cli.create("read", name="bob")
    assert server.verify(plain) == record
    cli.revoke("bob")
    assert server.verify(plain) is None
    assert not server.has_keys()


def test_revoke_by_id_and_unknown(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    a, _ = store.create("read", name="same")
    b, _ = store.create("read", name="same")
    with pytest.raises(BadRequestError):
        store.revoke("same")
    assert store.revoke(a.id) == a
    assert [r.id for r in store.records()] == [b.id]
    with pytest.raises(NotFoundError):
        store.revoke("nope")


@pytest.mark.parametrize("text", ["", "read,root", "everything"])
def test_bad_scopes_are_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(BadRequestError):
        KeyStore(tmp_path / "keys.json").create(text)
    assert not (tmp_path / "keys.json").exists()


def test_scope_implication() -> None:
    assert allows(parse_scopes("admin"), "manage") and allows(parse_scopes("admin"), "infer")
    assert allows(parse_scopes("manage"), "read")
    assert not allows(parse_scopes("manage"), "infer")
    assert not allows(parse_scopes("infer"), "read")
    assert not allows(parse_scopes("read infer manage"), "admin")


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/", None), ("HEAD", "/", None), ("POST", "/", "admin"),
        ("GET", "/api/tags", "read"), ("POST", "/api/show", "read"), ("GET", "/api/ps", "read"),
        ("GET", "/api/version", "read"), ("GET", "/v1/models", "read"), ("GET", "/v1/models/x", "read"),
        ("POST", "/api/generate", "infer"), ("POST", "/api/chat", "infer"), ("POST", "/api/embed", "infer"),
        ("POST", "/api/embeddings", "infer"), ("POST", "/v1/chat/completions", "infer"),
        ("POST", "/v1/messages", "infer"), ("POST", "/v1/responses", "infer"),
        ("POST", "/api/pull", "manage"), ("POST", "/api/create", "manage"), ("POST", "/api/copy", "manage"),
        ("DELETE", "/api/delete", "manage"), ("POST", "/api/push", "manage"),
        ("POST", "/api/blobs/sha256:00", "manage"), ("HEAD", "/api/blobs/sha256:00", "manage"),
        ("GET", "/v2/library/x/manifests/latest", "read"), ("PUT", "/v2/library/x/manifests/latest", "manage"),
        ("GET", "/metrics", "admin"), ("GET", "/api/keys", "admin"), ("GET", "/debug/pprof/", "admin"),
    ],
)
def test_route_classification(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope
