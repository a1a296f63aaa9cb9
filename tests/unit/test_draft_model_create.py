"""Modelfile DRAFT: the CLI's request, the .draft layer of /api/create, and what a stored model gives
the engine (LoadSpec.draft reaches the runner as --draft)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.cli.main import build_create_request
from corral.engine.base import LoadSpec
from corral.engine.llamacpp.proc import runner_argv
from corral.errors import BadRequestError, ModelNotFoundError
from corral.names import ModelName
from corral.schemas.native import CreateRequest
from corral.store import media
from corral.store.create import create_model
from corral.store.store import Store
from tests.ggufs import write_gguf


def run(store: Store, name: str, **fields: Any) -> list[str]:
    req = CreateRequest.model_validate(fields)
    return [r.status for r in create_model(store, ModelName.parse(name), req)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def test_draft_files_add_a_draft_layer_the_model_carries(store: Store, tmp_path: Path) -> None:
    base = store.blobs.add_file(write_gguf(tmp_path / "big.gguf", n=32))[0]
    small = store.blobs.add_file(write_gguf(tmp_path / "small.gguf", n=8))[0]
    run(store, "pair", files={"big.gguf": base}, draft_files={"small.gguf": small})
    model = store.load_model("pair")
    assert [layer.digest for layer in model.manifest.layers_of(media.DRAFT)] == [small]
    assert model.draft == store.blobs.path(small)
    # a model created FROM it keeps the draft; DRAFT given again replaces it
    run(store, "child", **{"from": "pair"})
    assert store.load_model("child").draft == store.blobs.path(small)
    run(store, "other", **{"from": "pair", "draft": "child"})
    assert store.load_model("other").manifest.layers_of(media.DRAFT)[0].digest == base  # child's weights
    assert len(store.load_model("other").manifest.layers_of(media.DRAFT)) == 1


def test_bad_drafts_are_refused(store: Store, tmp_path: Path) -> None:
    base = store.blobs.add_file(write_gguf(tmp_path / "big.gguf", n=32))[0]
    (tmp_path / "x.txt").write_text("not a model")
    text = store.blobs.add_file(tmp_path / "x.txt")[0]
    with pytest.raises(BadRequestError, match="GGUF"):
        run(store, "bad", files={"big.gguf": base}, draft_files={"x.txt": text})
    with pytest.raises(ModelNotFoundError):
        run(store, "bad", files={"big.gguf": base}, draft="nosuchmodel")
    with pytest.raises(BadRequestError, match="draft_quantize"):
        run(store, "bad", files={"big.gguf": base}, draft="x", draft_quantize="q4_K_M")
    with pytest.raises(BadRequestError, match="relative"):
        run(store, "bad", files={"big.gguf": base}, draft_files={"/abs.gguf": base})


def test_a_stored_draft_reaches_the_runner_command_line(tmp_path: Path) -> None:
    draft = tmp_path / "d.gguf"
    argv = runner_argv(LoadSpec(model_path=tmp_path / "m.gguf", draft=draft), "/tmp/s", "python")
    assert argv[argv.index("--draft") + 1] == str(draft)
    assert "--draft" not in runner_argv(LoadSpec(model_path=tmp_path / "m.gguf"), "/tmp/s", "python")


class Uploads:
    """Stands in for the client: records uploaded files, returns a digest per path."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def upload_blob(self, path: Path, progress: Any = None) -> str:
        self.paths.append(path)
        return "sha256:" + f"{len(self.paths):064d}"


def test_the_cli_uploads_a_draft_file_or_names_a_draft_model(tmp_path: Path) -> None:
    write_gguf(tmp_path / "model.gguf", n=8)
    write_gguf(tmp_path / "small.gguf", n=8)
    c = Uploads()
    req = build_create_request(c, "x", "FROM ./model.gguf\nDRAFT ./small.gguf\n", tmp_path)  # type: ignore[arg-type]
    assert c.paths[-1] == tmp_path / "small.gguf"
    assert req.draft_files == {"small.gguf": "sha256:" + f"{2:064d}"} and req.draft is None
    req = build_create_request(Uploads(), "x", "FROM smollm2:135m\nDRAFT smollm2:135m\n", tmp_path)  # type: ignore[arg-type]
    assert req.draft == "smollm2:135m" and req.draft_files is None
    with pytest.raises(BadRequestError, match="DRAFT must not reference the same local path as FROM"):
        build_create_request(Uploads(), "x", "FROM ./model.gguf\nDRAFT model.gguf\n", tmp_path)  # type: ignore[arg-type]
