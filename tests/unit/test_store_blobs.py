"""Blob store: digest validation, atomic verified writes, nothing left behind on failure."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from corral.errors import BadRequestError, DigestMismatchError
from corral.store.blobs import BlobStore, normalize_digest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("sha256:" + "A" * 64, "sha256:" + "a" * 64),
        ("sha256-" + "0f" * 32, "sha256:" + "0f" * 32),
    ],
)
def test_normalize_digest_accepts_both_separators(given: str, want: str) -> None:
    assert normalize_digest(given) == want


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:" + "a" * 63,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "sha256:../../" + "a" * 58,
        "../sha256-" + "a" * 64,
        "sha256:" + "a" * 64 + "/x",
        "sha256:" + "a" * 64 + "\n",
    ],
)
def test_normalize_digest_rejects(bad: str) -> None:
    with pytest.raises(BadRequestError, match="invalid digest format"):
        normalize_digest(bad)


def test_path_is_inside_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = "sha256:" + "ab" * 32
    assert store.path(digest) == tmp_path / "blobs" / ("sha256-" + "ab" * 32)
    with pytest.raises(BadRequestError):
        store.path("sha256:../../etc/passwd")


def test_add_bytes_writes_content_addressed_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest, size = store.add_bytes(b"hello")
    assert (digest, size) == (sha(b"hello"), 5)
    assert store.path(digest).read_bytes() == b"hello"
    assert store.exists(digest)
    assert store.path(digest).stat().st_mode & 0o777 == 0o644
    assert all_files(tmp_path) == [store.path(digest)]


def test_writer_verifies_expected_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with store.writer(sha(b"abc")) as w:
        w.write(b"ab")
        w.write(b"c")
        assert w.commit() == (sha(b"abc"), 3)
    assert w.created
    assert store.exists(sha(b"abc"))


def test_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    expected = sha(b"expected")
    with pytest.raises(DigestMismatchError) as exc, store.writer(expected) as w:
        w.write(b"something else")
        w.commit()
    assert str(exc.value) == f'digest mismatch, expected "{expected}", got "{sha(b"something else")}"'
    assert exc.value.status == 400
    assert all_files(tmp_path) == []


def test_exception_midway_removes_temp(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"partial")
        assert w.temp_path.exists()
        raise RuntimeError("killed")
    assert all_files(tmp_path) == []


def test_temp_file_name_is_not_a_blob_name(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with store.writer() as w:
        name = w.temp_path.name
        assert w.temp_path.parent == store.root
        w.abort()
    assert name.startswith("sha256-")
    with pytest.raises(BadRequestError):
        normalize_digest(name)


def test_existing_blob_is_kept_and_reported(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest, _ = store.add_bytes(b"same")
    os.utime(store.path(digest), (1000, 1000))
    with store.writer() as w:
        w.write(b"same")
        w.commit()
    assert not w.created
    assert store.path(digest).stat().st_mtime > 1000  # touched, like Ollama's touchLayer
    assert all_files(tmp_path) == [store.path(digest)]


def test_add_file_and_concat(tmp_path: Path) -> None:
    parts = []
    for i, chunk in enumerate([b"a" * (1 << 20) + b"x", b"", b"tail"]):
        p = tmp_path / f"part{i}"
        p.write_bytes(chunk)
        parts.append(p)
    store = BlobStore(tmp_path / "models" / "blobs")
    whole = b"".join(p.read_bytes() for p in parts)
    assert store.add_files_concat(parts) == (sha(whole), len(whole))
    assert store.path(sha(whole)).read_bytes() == whole
    assert store.add_file(parts[0]) == (sha(parts[0].read_bytes()), (1 << 20) + 1)
    with pytest.raises(DigestMismatchError):
        store.add_file(parts[2], expected_digest=sha(b"nope"))
    assert not store.exists(sha(b"tail"))
