"""`corral create`: which local files a Modelfile's FROM uploads (Ollama's filesForModel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli.main import _model_files
from corral.errors import CorralError


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_a_safetensors_directory_uploads_weights_json_tokenizer_and_template(tmp_path: Path) -> None:
    model = tmp_path / "m"
    touch(model, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json",
          "tokenizer.json", "tokenizer.model", "chat_template.jinja", "1_Pooling/config.json", "README.md",
          "adapter_model.safetensors", ".cache/huggingface/x.json", "onnx/model.onnx")
    files = _model_files("./m", tmp_path)
    assert files is not None
    assert sorted(files) == [
        "1_Pooling/config.json", "chat_template.jinja", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "tokenizer.json", "tokenizer.model",
    ]
    assert files["1_Pooling/config.json"] == model / "1_Pooling" / "config.json"


def test_gguf_file_and_directory_and_names(tmp_path: Path) -> None:
    touch(tmp_path, "a.gguf", "g/b.gguf", "g/c.gguf")
    assert _model_files("a.gguf", tmp_path) == {"a.gguf": tmp_path / "a.gguf"}
    assert _model_files(str(tmp_path / "g"), Path("/")) == {"b.gguf": tmp_path / "g" / "b.gguf"}
    assert _model_files("llama3:8b", tmp_path) is None  # not a path: a model name
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorralError, match="no Modelfile or safetensors files found"):
        _model_files("empty", tmp_path)
