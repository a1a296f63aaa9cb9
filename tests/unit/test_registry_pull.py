"""Pull against a fault-injecting registry on 127.0.0.1: statuses, parts, resume, sharing, faults."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import CorralError, DigestMismatchError, NotFoundError
from corral.names import ModelName
from corral.registry.client import RegistryOptions, RetryPolicy
from corral.registry.download import DownloadTuning
from corral.registry.pull import pull_model
from corral.store.blobs import BLOB_NAME_RE
from corral.store.store import Store
from tests.registry_fake import FakeRegistry, digest_of

MODEL = "application/vnd.ollama.image.model"
TUNING = DownloadTuning(concurrency=4, min_part=256 * 1024, max_part=256 * 1024, save_every=64 * 1024)
FAST = RetryPolicy(attempts=3, base=0.01)


def weights(n: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


@pytest.fixture
def reg() -> Iterator[FakeRegistry]:
    with FakeRegistry() as r:
        yield r


def _name(reg: FakeRegistry, repo_tag: str = "library/m:1") -> ModelName:
    return ModelName.parse(f"{reg.host}/{repo_tag}")


def _pull(store: Store, reg: FakeRegistry, repo_tag: str = "library/m:1", **kw: object) -> list[str]:
    opts = RegistryOptions(insecure=True, retry=FAST, **kw)  # type: ignore[arg-type]
    return [p.status for p in pull_model(store, _name(reg, repo_tag), opts, tuning=TUNING)]


def test_pull_parallel_parts_statuses_and_bytes(tmp_path: Path, reg: FakeRegistry) -> None:
    blob = weights(1_000_000)
    manifest = reg.add_model("library/m:1", b'{"model_format":"gguf"}', [(MODEL, blob)])
    store = Store(tmp_path)
    statuses = _pull(store, reg)
    short = digest_of(blob)[7:19]
    assert statuses[0] == "pulling manifest"
    assert f"pulling {short}" in statuses
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert store.blobs.path(digest_of(blob)).read_bytes() == blob
    assert store.read_manifest(_name(reg))[1] == manifest
    ranges = [r for _, p, r in reg.requests("GET", digest_of(blob)) if r]
    assert len(ranges) == 4  # 1 MB in 256 KiB parts
    assert not [n for n in store.blobs.list_names() if "partial" in n]


def test_dropped_connection_is_retried(tmp_path: Path, reg: FakeRegistry) -> None:
    blob = weights(600_000)
    reg.add_model("library/m:1", b"{}", [(MODEL, blob)])
    reg.faults.drop_after[digest_of(blob)] = 100_000
    store = Store(tmp_path)
    assert _pull(store, reg)[-1] == "success"
    assert store.blobs.path(digest_of(blob)).read_bytes() == blob


def test_wrong_bytes_fail_and_keep_the_old_version(tmp_path: Path, reg: FakeRegistry) -> None:
    old = reg.add_model("library/m:1", b"{}", [(MODEL, weights(300_000))])
    store = Store(tmp_path)
    _pull(store, reg)
    bad = weights(300_000, seed=7)
    reg.add_model("library/m:1", b"{}", [(MODEL, bad)])
    reg.faults.corrupt.add(digest_of(bad))
    with pytest.raises(DigestMismatchError, match="digest mismatch, want"):
        _pull(store, reg)
    assert store.read_manifest(_name(reg))[1] == old
    assert not store.blobs.exists(digest_of(bad))
    assert not [n for n in store.blobs.list_names() if digest_of(bad)[7:] in n]


def test_lying_content_length_is_an_error(tmp_path: Path, reg: FakeRegistry) -> None:
    blob = weights(100_000)
    reg.add_model("library/m:1", b"{}", [(MODEL, blob)])
    reg.faults.head_length[digest_of(blob)] = 5
    store = Store(tmp_path)
    with pytest.raises(CorralError, match="registry reports 5 bytes"):
        _pull(store, reg)
    assert not store.exists(_name(reg))


def test_manifest_referencing_a_missing_blob(tmp_path: Path, reg: FakeRegistry) -> None:
    blob = weights(1000)
    reg.add_model("library/m:1", b"{}", [(MODEL, blob)])
    del reg.blobs[digest_of(blob)]
    store = Store(tmp_path)
    with pytest.raises(NotFoundError, match="not found"):
        _pull(store, reg)
    assert not store.exists(_name(reg))


def test_unknown_manifest(tmp_path: Path, reg: FakeRegistry) -> None:
    with pytest.raises(NotFoundError, match="pull model manifest: file does not exist"):
        _pull(Store(tmp_path), reg, "library/nope:1")


def test_5xx_then_success(tmp_path: Path, reg: FakeRegistry) -> None:
    reg.add_model("library/m:1", b"{}", [(MODEL, weights(1000))])
    reg.faults.errors_5xx = 2
    assert _pull(Store(tmp_path), reg)[-1] == "success"
    assert len(reg.requests("GET", "/manifests/")) == 3


def test_5xx_forever_gives_up(tmp_path: Path, reg: FakeRegistry) -> None:
    reg.add_model("library/m:1", b"{}", [(MODEL, weights(1000))])
    reg.faults.errors_5xx = 100
    with pytest.raises(CorralError, match="503"):
        _pull(Store(tmp_path), reg)


def test_http_needs_insecure(tmp_path: Path, reg: FakeRegistry) -> None:
    name = ModelName.parse(f"http://{reg.host}/library/m:1")
    with pytest.raises(CorralError, match="insecure protocol http"):
        list(pull_model(Store(tmp_path), name, RegistryOptions(insecure=False)))


def test_resume_from_partial_state(tmp_path: Path, reg: FakeRegistry) -> None:
    blob = weights(1_000_000)
    reg.add_model("library/m:1", b"{}", [(MODEL, blob)])
    reg.faults.drop_after[digest_of(blob)] = 200_000
    store = Store(tmp_path)
    one_try = RetryPolicy(attempts=1, base=0.01)
    tuning = DownloadTuning(concurrency=1, min_part=2_000_000, max_part=2_000_000, save_every=1024)
    with pytest.raises(CorralError):
        list(pull_model(store, _name(reg), RegistryOptions(insecure=True, retry=one_try), tuning=tuning))
    names = store.blobs.list_names()
    assert f"sha256-{digest_of(blob)[7:]}-partial" in names
    assert f"sha256-{digest_of(blob)[7:]}-partial-0" in names
    reg.log.clear()
    list(pull_model(store, _name(reg), RegistryOptions(insecure=True, retry=one_try), tuning=tuning))
    ranges = [r for _, p, r in reg.requests("GET", digest_of(blob)) if r]
    assert ranges and all(not r.startswith("bytes=0-") for r in ranges)
    assert store.blobs.path(digest_of(blob)).read_bytes() == blob


def test_concurrent_pulls_share_one_download(tmp_path: Path, reg: FakeRegistry) -> None:
    blob = weights(512 * 1024)
    reg.add_model("library/m:1", b"{}", [(MODEL, blob)])
    reg.add_model("library/m:2", b"{}", [(MODEL, blob)])
    reg.faults.delay_per_chunk = 0.02
    reg.faults.chunk = 16 * 1024
    results: list[str] = []

    def run(tag: str) -> None:
        results.append(_pull(Store(tmp_path), reg, f"library/m:{tag}")[-1])

    threads = [threading.Thread(target=run, args=(t,)) for t in ("1", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == ["success", "success"]
    ranged = [r for _, p, r in reg.requests("GET", digest_of(blob)) if r]
    assert len(ranged) == 2  # two parts, fetched once between both pulls


def test_disk_full_leaves_only_removable_partials(
    tmp_path: Path, reg: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = weights(300_000)
    reg.add_model("library/m:1", b"{}", [(MODEL, blob)])

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    store = Store(tmp_path)
    with pytest.raises(CorralError, match="no space left on device"):
        _pull(store, reg)
    assert not store.exists(_name(reg))
    leftovers = [n for n in store.blobs.list_names() if not BLOB_NAME_RE.fullmatch(n)]
    assert leftovers and all("partial" in n for n in leftovers)
    valid = [n for n in store.blobs.list_names() if BLOB_NAME_RE.fullmatch(n)]
    assert f"sha256-{digest_of(blob)[7:]}" not in valid
    store.prune(grace_seconds=0)
    assert not [n for n in store.blobs.list_names() if "partial" in n]


def test_replaced_manifest_removes_unused_layers(tmp_path: Path, reg: FakeRegistry) -> None:
    v1, v2 = weights(2000, 1), weights(2000, 2)
    reg.add_model("library/m:1", b"{}", [(MODEL, v1)])
    store = Store(tmp_path)
    _pull(store, reg)
    reg.add_model("library/m:1", b"{}", [(MODEL, v2)])
    statuses = _pull(store, reg)
    assert "removing unused layers" in statuses
    assert not store.blobs.exists(digest_of(v1))
    assert store.blobs.exists(digest_of(v2))
