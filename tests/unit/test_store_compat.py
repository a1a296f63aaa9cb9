"""Ollama compatibility: read a store tree written exactly as Ollama writes it, and write
manifests/configs in exactly Ollama's byte format (spec §6)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from corral.names import ModelName
from corral.schemas.native import CreateRequest
from corral.store.create import create_model
from corral.store.store import Store

GO_TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
# json.NewEncoder output of map[string]any{"stop": [...], "temperature": 0.7}: keys sorted, HTML escaped
PARAMS = b'{"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],"temperature":0.7}\n'
MESSAGES = b'[{"role":"user","content":"hi \\u0026 bye"},{"role":"assistant","content":"ok"}]\n'


def gguf_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "w.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(32)
    w.add_file_type(15)  # Q4_K_M
    w.add_tensor("output.weight", np.zeros(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def put_blob(root: Path, data: bytes) -> tuple[str, int]:
    """Write a blob the way Ollama names it: blobs/sha256-<hex>."""
    hexd = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{hexd}").write_bytes(data)
    return f"sha256:{hexd}", len(data)


def layer_json(media_type: str, blob: tuple[str, int], extra: str = "") -> str:
    kind = f"application/vnd.ollama.image.{media_type}"
    return f'{{"mediaType":"{kind}","digest":"{blob[0]}","size":{blob[1]}{extra}}}'


def go_manifest(config: tuple[str, int], layers: list[str]) -> bytes:
    return (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config[0]}",'
        f'"size":{config[1]}}},"layers":[{",".join(layers)}]}}\n'
    ).encode()


def go_config(diff_ids: list[str], extra: str = "") -> bytes:
    ids = ",".join(f'"{d}"' for d in diff_ids)
    return (
        '{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"8.0B",'
        f'"file_type":"Q4_K_M"{extra},"architecture":"amd64","os":"linux",'
        f'"rootfs":{{"type":"layers","diff_ids":[{ids}]}}}}\n'
    ).encode()


@pytest.fixture
def ollama_tree(tmp_path: Path) -> Path:
    root = tmp_path / "ollama-models"
    model = put_blob(root, gguf_bytes(tmp_path))
    template = put_blob(root, GO_TEMPLATE.encode())
    system = put_blob(root, b"You are helpful.")
    params = put_blob(root, PARAMS)
    messages = put_blob(root, MESSAGES)
    lic1 = put_blob(root, b"LICENSE ONE")
    lic2 = put_blob(root, b"LICENSE TWO")
    layers = [model, template, system, params, messages, lic1, lic2]
    config = put_blob(root, go_config([x[0] for x in layers]))
    kinds = ["model", "template", "system", "params", "messages", "license", "license"]
    manifest = go_manifest(config, [layer_json(k, b) for k, b in zip(kinds, layers, strict=True)])
    path = root / "manifests/registry.ollama.ai/library/llama3.2/latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    # a pulled manifest: registry bytes, no trailing newline, legacy .prompt template, .embed layer
    prompt = put_blob(root, b"{{ .Prompt }}")
    embed = put_blob(root, b"old embeddings")
    pulled = go_manifest(
        config, [layer_json("model", model), layer_json("prompt", prompt), layer_json("embed", embed)]
    )
    pulled_path = root / "manifests/registry.ollama.ai/someone/Old-Model/Q4"
    pulled_path.parent.mkdir(parents=True)
    pulled_path.write_bytes(pulled.rstrip(b"\n"))
    return root


def test_lists_an_ollama_store(ollama_tree: Path) -> None:
    store = Store(ollama_tree)
    entries = {e.name.display_shortest(): e for e in store.list_models()}
    assert set(entries) == {"llama3.2:latest", "someone/Old-Model:Q4"}
    for entry in entries.values():
        data = store.manifest_path(entry.name).read_bytes()
        assert entry.digest == hashlib.sha256(data).hexdigest()
        blobs = {layer.digest for layer in entry.manifest.all_layers()}
        assert entry.size == sum(store.blobs.path(d).stat().st_size for d in blobs)
        assert entry.config is not None
        assert (entry.config.model_type, entry.config.file_type) == ("8.0B", "Q4_K_M")


def test_loads_every_layer_kind(ollama_tree: Path) -> None:
    store = Store(ollama_tree)
    model = store.load_model("LLAMA3.2")
    assert model.name.model == "llama3.2"
    assert model.model_path is not None and model.model_path.read_bytes()[:4] == b"GGUF"
    assert model.template == GO_TEMPLATE
    assert model.system == "You are helpful."
    assert model.params == {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7}
    assert model.messages == [{"role": "user", "content": "hi & bye"}, {"role": "assistant", "content": "ok"}]
    assert model.license == ["LICENSE ONE", "LICENSE TWO"]
    assert model.config.model_families == ["llama"] and len(model.config.diff_ids or []) == 7
    assert model.parent_model == "" and model.adapters == [] and model.projectors == []


def test_loads_legacy_prompt_and_ignores_embed(ollama_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(ollama_tree)
    with caplog.at_level(logging.WARNING):
        model = store.load_model("someone/old-model:q4")
    assert model.template == "{{ .Prompt }}"
    assert "embeddings" in caplog.text
    assert model.name.display_shortest() == "someone/Old-Model:Q4"


def test_create_writes_ollama_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    digest, size = store.blobs.add_bytes(gguf_bytes(tmp_path))
    req = CreateRequest.model_validate(
        {
            "files": {"w.gguf": digest},
            "template": GO_TEMPLATE,
            "system": "You are helpful.",
            "parameters": {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7},
        }
    )
    list(create_model(store, ModelName.parse("mine"), req))
    manifest_bytes = store.manifest_path(ModelName.parse("mine")).read_bytes()
    model = store.load_model("mine")
    cfg = model.manifest.config
    template = (model.manifest.layers[1].digest, len(GO_TEMPLATE))
    system = (model.manifest.layers[2].digest, len(b"You are helpful."))
    params = (model.manifest.layers[3].digest, len(PARAMS))
    blob_path = str(store.blobs.path(digest))
    expected = go_manifest(
        (cfg.digest, cfg.size),
        [
            layer_json("model", (digest, size), f',"from":"{blob_path}"'),
            layer_json("template", template),
            layer_json("system", system),
            layer_json("params", params),
        ],
    )
    assert manifest_bytes == expected
    assert store.blobs.path(params[0]).read_bytes() == PARAMS
    assert template[0] == "sha256:" + hashlib.sha256(GO_TEMPLATE.encode()).hexdigest()
    config_bytes = store.blobs.path(cfg.digest).read_bytes()
    want_config = go_config(
        [digest, template[0], system[0], params[0]], ',"context_length":4096,"embedding_length":32'
    )
    assert config_bytes == want_config.replace(b'"8.0B"', b'"16"')
