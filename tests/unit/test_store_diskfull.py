"""Disk full (ENOSPC injected into the file writes) in every writer: one clear 507 naming the path and
the free space, nothing half-written left behind; and I/O errors that must not look like an empty store."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.config import Settings
from corral.errors import CorralError, InsufficientStorageError
from corral.names import ModelName
from corral.registry.download import _disk_error
from corral.schemas.native import CreateRequest
from corral.server.app import create_app
from corral.store import bundled
from corral.store.blobs import TEMP_PREFIX
from corral.store.bundled import BundledModel, import_bundled
from corral.store.create import create_model
from corral.store.diskspace import disk_full_error, human_bytes
from corral.store.store import Store
from tests.appenv import make_chunks
from tests.diskfull import fill_disk
from tests.ggufs import write_gguf


def leftovers(store: Store) -> list[str]:
    blobs = [n for n in store.blobs.list_names() if n.startswith(TEMP_PREFIX)]
    manifests = [str(p) for p in store.manifests_root.rglob(".*")] if store.manifests_root.exists() else []
    return blobs + manifests


def check_message(err: CorralError, action: str, where: Path) -> None:
    assert err.status == 507
    assert f"no space left on device while {action} {where}" in err.message
    assert " free); free some space and try again" in err.message


def test_blob_writer_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    hit = fill_disk(monkeypatch, TEMP_PREFIX, room=10)
    with pytest.raises(InsufficientStorageError) as info:
        store.blobs.add_stream([b"x" * 8, b"y" * 8])
    assert hit
    check_message(info.value, "writing blob", store.blobs.root)
    assert leftovers(store) == []


def test_message_shape() -> None:
    err = disk_full_error(Path("/"), "writing blob")
    assert err.status == 507 and err.message.startswith("no space left on device while writing blob / (")
    assert human_bytes(999) == "999 B" and human_bytes(1_500_000) == "1.5 MB"
    pull = _disk_error(OSError(errno.ENOSPC, "No space left on device"), Path("/"))
    assert isinstance(pull, InsufficientStorageError) and "pull again" in pull.message
    quota = _disk_error(OSError(errno.EDQUOT, "Disk quota exceeded"), Path("/"))
    assert isinstance(quota, InsufficientStorageError)
    other = OSError(errno.EIO, "I/O error")
    assert _disk_error(other, Path("/")) is other


def seed(store: Store, tmp_path: Path, name: str = "m:1") -> None:
    digest = store.blobs.add_file(write_gguf(tmp_path / "m.gguf"))[0]
    req = CreateRequest.model_validate({"model": name, "files": {"m.gguf": digest}})
    list(create_model(store, ModelName.parse(name), req))


def test_copy_keeps_the_source_and_writes_no_partial_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "models")
    seed(store, tmp_path)
    fill_disk(monkeypatch, ".tmp-")
    with pytest.raises(InsufficientStorageError) as info:
        store.copy("m:1", "m:2")
    check_message(info.value, "writing manifest", store.manifest_path(ModelName.parse("m:2")))
    assert not store.exists("m:2") and store.exists("m:1")
    assert leftovers(store) == []


def test_create_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "models")
    digest = store.blobs.add_file(write_gguf(tmp_path / "m.gguf"))[0]
    fill_disk(monkeypatch, TEMP_PREFIX)
    req = CreateRequest.model_validate({"model": "m", "files": {"m.gguf": digest}, "system": "be brief"})
    with pytest.raises(InsufficientStorageError):
        list(create_model(store, ModelName.parse("m"), req))
    assert leftovers(store) == [] and not store.exists("m")


@pytest.fixture
def fake_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    (tmp_path / "src").mkdir()
    chunks = make_chunks(tmp_path / "src")
    model = BundledModel(name="fake:1b", packages=("json",), family_template=None, _files=lambda: chunks)
    monkeypatch.setattr(bundled, "_BUNDLED", (model,))
    return chunks


def test_bundled_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_bundled: list[Path]) -> None:
    store = Store(tmp_path / "models")
    fill_disk(monkeypatch, TEMP_PREFIX, room=50_000)
    with pytest.raises(InsufficientStorageError) as info:
        list(import_bundled(store, "fake:1b"))
    check_message(info.value, "writing blob", store.blobs.root)
    assert store.blobs.list_names() == [] and not store.exists("fake:1b")


def api(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(main())


@pytest.fixture
def app_store(tmp_path: Path) -> Iterator[tuple[Any, Store]]:
    store = Store(tmp_path / "models")
    yield create_app(Settings(home=tmp_path, noprune=True), store), store


def test_api_blobs_upload_is_507(app_store: tuple[Any, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = app_store
    data = b"z" * 200_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fill_disk(monkeypatch, TEMP_PREFIX, room=100_000)
    r = api(app, "POST", f"/api/blobs/{digest}", content=data)
    assert r.status_code == 507
    assert r.json()["error"].startswith(f"no space left on device while writing blob {store.blobs.root}")
    assert store.blobs.list_names() == []


def test_api_copy_is_507(app_store: tuple[Any, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = app_store
    seed(store, tmp_path)
    fill_disk(monkeypatch, ".tmp-")
    r = api(app, "POST", "/api/copy", json={"source": "m:1", "destination": "m:2"})
    assert r.status_code == 507 and "no space left on device while writing manifest" in r.json()["error"]


def test_tags_surfaces_an_unlistable_store(
    app_store: tuple[Any, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors must be an error, never an empty model list."""
    app, store = app_store
    seed(store, tmp_path)
    assert [m["name"] for m in api(app, "GET", "/api/tags").json()["models"]] == ["m:1"]
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(store.manifests_root) in os.fspath(path):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(CorralError, match="Too many open files"):
        store.list_models()
    r = api(app, "GET", "/api/tags")
    assert r.status_code == 500 and "Too many open files" in r.json()["error"]
    assert store.referenced_digests() is None  # and pruning must not act on a partial view


def test_tags_surfaces_an_unreadable_manifest(
    app_store: tuple[Any, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, store = app_store
    seed(store, tmp_path)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.parent.parent.parent.parent == store.manifests_root:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    r = api(app, "GET", "/api/tags")
    assert r.status_code == 500 and "Too many open files" in r.json()["error"]
