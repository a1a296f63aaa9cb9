"""Store: manifest paths, case-insensitive resolve, atomic writes, list, copy, delete, prune."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from corral.errors import BadRequestError, InvalidNameError, ModelNotFoundError
from corral.names import ModelName
from corral.store import media
from corral.store.manifests import ConfigV2, Layer, Manifest
from corral.store.store import Store


def make_model(store: Store, name: str, payload: bytes, *, extra: bytes | None = None) -> Manifest:
    """Write blobs and a manifest for `name` (model layer `payload`, optional system layer)."""
    d, n = store.blobs.add_bytes(payload)
    layers = [Layer(media.MODEL, d, n)]
    if extra is not None:
        d2, n2 = store.blobs.add_bytes(extra)
        layers.append(Layer(media.SYSTEM, d2, n2))
    config = ConfigV2(model_format="gguf", model_family="llama", diff_ids=[x.digest for x in layers])
    cd, cn = store.blobs.add_bytes(config.to_bytes())
    manifest = Manifest(config=Layer(media.CONFIG, cd, cn), layers=layers)
    store.write_manifest(ModelName.parse(name), manifest)
    return manifest


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_manifest_path_layout(tmp_path: Path) -> None:
    store = Store(tmp_path)
    name = ModelName.parse("myuser/model:v1")
    assert store.manifest_path(name) == tmp_path / "manifests/registry.ollama.ai/myuser/model/v1"
    host = ModelName.parse("localhost:5000/ns/m:t")
    assert store.manifest_path(host) == tmp_path / "manifests/localhost:5000/ns/m/t"


@pytest.mark.parametrize(
    "bad", ["../evil", "a/../../b", "/../abs", "/abs/../../x", "..", "x:..", "a/b/c/d/e", "", "m:t/x"]
)
def test_invalid_names_never_touch_disk(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path / "models")
    make_model(store, "ok", b"w")
    before = files_under(tmp_path)
    for op in (store.resolve, store.exists, store.delete, store.load_model):
        with pytest.raises(InvalidNameError):
            op(bad)
    with pytest.raises(InvalidNameError):
        store.copy("ok", bad)
    assert files_under(tmp_path) == before


def test_unsafe_modelname_object_is_rejected(tmp_path: Path) -> None:
    store = Store(tmp_path)
    evil = ModelName(host="..", namespace="..", model="x", tag="latest")
    with pytest.raises(InvalidNameError):
        store.manifest_path(evil)
    with pytest.raises(InvalidNameError):
        store.write_manifest(evil, b"{}")


def test_write_requires_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    missing = Manifest(config=Layer(media.CONFIG, "sha256:" + "0" * 64, 1), layers=[])
    with pytest.raises(BadRequestError, match="not found"):
        store.write_manifest(ModelName.parse("m"), missing)
    assert not store.exists("m")


def test_write_read_roundtrip_and_bytes_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    manifest = make_model(store, "m", b"weights")
    raw = manifest.to_bytes().replace(b"{", b"{ ", 1)  # a pulled manifest with odd spacing
    store.write_manifest(ModelName.parse("pulled"), raw)
    assert store.read_manifest("pulled") == (manifest, raw)
    assert store.manifest_path(ModelName.parse("pulled")).read_bytes() == raw
    leftovers = [p for p in files_under(tmp_path / "manifests") if p.name.startswith(".")]
    assert leftovers == []


def test_resolve_is_case_insensitive(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_model(store, "MyModel:Latest", b"w")
    resolved = store.resolve("mymodel:LATEST")
    assert (resolved.model, resolved.tag) == ("MyModel", "Latest")
    assert store.exists("MYMODEL")
    assert store.load_model("mymodel").name == resolved
    with pytest.raises(ModelNotFoundError, match="model 'nothere:v2' not found"):
        store.resolve("nothere:v2")


def test_write_replaces_case_variant(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_model(store, "Foo:Bar", b"one")
    second = make_model(store, "foo:bar", b"two")
    make_model(store, "FOO:other", b"three")
    tags = sorted(
        p.relative_to(tmp_path / "manifests").as_posix() for p in files_under(tmp_path / "manifests")
    )
    assert tags == ["registry.ollama.ai/library/Foo/Bar", "registry.ollama.ai/library/Foo/other"]
    assert store.read_manifest("FOO:BAR")[0] == second


def test_list_models(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a = make_model(store, "a", b"aaaa")
    b = make_model(store, "ns/b:t", b"bb", extra=b"sys")
    old = time.time() - 100
    os.utime(store.manifest_path(ModelName.parse("a")), (old, old))
    (tmp_path / "manifests/registry.ollama.ai/library/broken").mkdir()
    (tmp_path / "manifests/registry.ollama.ai/library/broken/latest").write_bytes(b"{nope")
    (tmp_path / "manifests/registry.ollama.ai/library/a/.latest.tmp-123").write_bytes(b"x")
    entries = store.list_models()
    assert [e.name.display_shortest() for e in entries] == ["ns/b:t", "a:latest"]
    for entry, manifest in zip(entries, [b, a], strict=True):
        data = store.manifest_path(entry.name).read_bytes()
        assert entry.digest == hashlib.sha256(data).hexdigest()
        assert entry.size == sum(x.size for x in manifest.layers) + manifest.config.size
        assert entry.modified_at.tzinfo is not None
        assert entry.config is not None and entry.config.model_family == "llama"
    assert entries[1].modified_at.timestamp() == pytest.approx(old, abs=1)


def test_copy_shares_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    make_model(store, "src", b"w")
    blobs_before = set(store.blobs.list_names())
    store.copy("SRC", "dst:v1")
    assert store.read_manifest("dst:v1")[1] == store.read_manifest("src")[1]
    assert set(store.blobs.list_names()) == blobs_before
    with pytest.raises(ModelNotFoundError):
        store.copy("missing", "x")


def test_delete_keeps_shared_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    one = make_model(store, "one", b"shared", extra=b"only-one")
    two = make_model(store, "ns/two", b"shared")
    store.delete("ONE")
    assert not store.exists("one")
    assert not (tmp_path / "manifests/registry.ollama.ai/library").exists()  # empty dirs pruned
    assert (tmp_path / "manifests").is_dir()
    assert store.blobs.exists(one.layers[0].digest)  # still used by two
    assert not store.blobs.exists(one.layers[1].digest)
    store.delete("ns/two")
    assert not store.blobs.exists(two.layers[0].digest)
    assert store.blobs.list_names() == []
    with pytest.raises(ModelNotFoundError):
        store.delete("one")


def test_delete_with_corrupt_other_manifest_keeps_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    one = make_model(store, "one", b"w")
    bad = tmp_path / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("garbage")
    store.delete("one")
    assert store.blobs.exists(one.layers[0].digest)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_respects_grace_and_references(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = make_model(store, "kept", b"in use")
    fresh, _ = store.blobs.add_bytes(b"fresh orphan")
    stale, _ = store.blobs.add_bytes(b"stale orphan")
    _age(store.blobs.path(stale), 7200)
    _age(store.blobs.path(kept.layers[0].digest), 7200)
    partial = store.blobs.root / ("sha256-" + "e" * 64 + "-partial")
    partial.write_bytes(b"p")
    temp_old = store.blobs.root / "sha256-tmp-0123"
    temp_old.write_bytes(b"t")
    _age(temp_old, 7200)
    stale_manifest_tmp = tmp_path / "manifests/registry.ollama.ai/library/kept/.latest.tmp-ab"
    stale_manifest_tmp.write_bytes(b"x")
    _age(stale_manifest_tmp, 7200)
    (tmp_path / "manifests/h/n/emptymodel").mkdir(parents=True)

    removed = store.prune()
    assert removed == 3 + 3  # stale blob, temp blob, manifest temp; 3 empty dirs
    assert store.blobs.exists(kept.layers[0].digest)
    assert store.blobs.exists(fresh)
    assert not store.blobs.exists(stale)
    assert partial.exists() and not temp_old.exists() and not stale_manifest_tmp.exists()
    assert not (tmp_path / "manifests/h").exists()
    # with `now` far ahead, the fresh orphan and the partial go too
    assert store.prune(now=time.time() + 7200) == 2
    assert store.blobs.exists(kept.layers[0].digest) and store.exists("kept")


def test_prune_skips_when_a_manifest_is_corrupt(tmp_path: Path) -> None:
    store = Store(tmp_path)
    orphan, _ = store.blobs.add_bytes(b"orphan")
    bad = tmp_path / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"layers":[{"digest":"sha256:../../etc"}]}')
    assert store.prune(now=time.time() + 10_000) == 0
    assert store.blobs.exists(orphan)


def test_store_never_writes_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = Store(root)
    make_model(store, "a", b"x")
    store.copy("a", "b")
    store.delete("a")
    store.prune(now=time.time() + 10_000)
    assert {p for p in tmp_path.rglob("*")} <= {root, *root.rglob("*")}


def test_pinned_blobs_survive_delete_and_prune(tmp_path: Path) -> None:
    store = Store(tmp_path)
    manifest = make_model(store, "m", b"weights")
    digest = manifest.layers[0].digest
    with store.pinning() as pin:
        pin(digest.upper().replace("SHA256", "sha256"))
        store.delete("m")
        assert store.blobs.exists(digest)
        assert store.prune(now=time.time() + 10_000) == 0
        assert Store(tmp_path).blobs.exists(digest)  # pins are shared by stores on one root
    assert store.prune(now=time.time() + 10_000) == 1
    assert not store.blobs.exists(digest)
