"""create_model (/api/create): files and from, Modelfile merge rules, statuses, errors, safety."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from corral.errors import BadRequestError, CorralError, InvalidNameError, ModelNotFoundError
from corral.names import ModelName
from corral.schemas.native import CreateRequest
from corral.store import media
from corral.store.create import create_model
from corral.store.store import Store
from corral.template.builtin import get_builtin, reference_jinja
from tests.ggufs import write_gguf


def upload(store: Store, path: Path) -> str:
    return store.blobs.add_file(path)[0]


def run(store: Store, name: str, **fields: Any) -> list[str]:
    req = CreateRequest.model_validate(fields)
    return [r.status for r in create_model(store, ModelName.parse(name), req)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def chatml_gguf(tmp_path: Path) -> Path:
    jinja = reference_jinja("chatml")
    assert jinja is not None
    return write_gguf(tmp_path / "chat.gguf", chat_template=jinja)


@pytest.fixture
def plain_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "plain.gguf", n=32)


def stray_files(store: Store) -> list[str]:
    """Temp files (blobs or manifests) left behind."""
    return [p.name for p in store.root.rglob("*") if p.is_file() and (".tmp-" in p.name or "-tmp-" in p.name)]


def test_create_from_gguf_autodetects_template(store: Store, chatml_gguf: Path) -> None:
    digest = upload(store, chatml_gguf)
    statuses = run(store, "mine", files={"model.gguf": digest})
    model = store.load_model("mine")
    chatml = get_builtin("chatml")
    params_digest = model.manifest.layers_of(media.PARAMS)[0].digest
    assert statuses == [
        "parsing GGUF",
        f"using existing layer {digest}",
        "using autodetected template chatml",
        f"creating new layer {params_digest}",
        "writing manifest",
        "success",
    ]
    assert model.template == chatml.template
    assert model.params == chatml.params
    assert model.model_path == store.blobs.path(digest)
    assert model.parent_model == str(store.blobs.path(digest))
    c = model.config
    assert (c.model_format, c.model_family, c.model_families) == ("gguf", "llama", ["llama"])
    assert (c.model_type, c.file_type, c.context_length, c.embedding_length) == ("64", "Q4_1", 2048, 64)
    assert c.capabilities == [] and (c.architecture, c.os, c.rootfs_type) == ("amd64", "linux", "layers")
    assert c.diff_ids == [x.digest for x in model.manifest.layers]
    assert stray_files(store) == []


def test_create_without_chat_template_has_no_template_layer(store: Store, plain_gguf: Path) -> None:
    digest = upload(store, plain_gguf)
    assert run(store, "plain", files={"m.gguf": digest}) == [
        "parsing GGUF",
        f"using existing layer {digest}",
        "writing manifest",
        "success",
    ]
    model = store.load_model("plain")
    assert model.template is None and model.params == {}


def test_create_with_all_options(store: Store, chatml_gguf: Path) -> None:
    digest = upload(store, chatml_gguf)
    statuses = run(
        store,
        "full",
        files={"model.gguf": digest},
        template="{{ .Prompt }}",
        system="be brief",
        parameters={"temperature": 0.2, "stop": ["END"], "num_ctx": 1024},
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<hello>"}],
        license=["MIT", "Apache"],
    )
    model = store.load_model("full")
    assert model.template == "{{ .Prompt }}"  # no autodetection when TEMPLATE is given
    assert "using autodetected template chatml" not in statuses
    assert model.system == "be brief"
    assert model.params == {"num_ctx": 1024, "stop": ["END"], "temperature": 0.2}
    assert model.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<hello>"}]
    assert model.license == ["MIT", "Apache"]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert sum(s.startswith("creating new layer") for s in statuses) == 6
    params_blob = store.blobs.path(model.manifest.layers_of(media.PARAMS)[0].digest).read_bytes()
    assert params_blob == b'{"num_ctx":1024,"stop":["END"],"temperature":0.2}\n'
    msgs = store.blobs.path(model.manifest.layers_of(media.MESSAGES)[0].digest).read_bytes()
    assert msgs == b'[{"role":"user","content":"hi"},{"role":"assistant","content":"\\u003chello\\u003e"}]\n'


def test_request_params_merge_over_autodetected(store: Store, chatml_gguf: Path) -> None:
    digest = upload(store, chatml_gguf)
    run(store, "m", files={"model.gguf": digest}, parameters={"top_k": 5})
    assert store.load_model("m").params == {"stop": ["<|im_start|>", "<|im_end|>"], "top_k": 5}


def test_create_from_model_merge_rules(store: Store, chatml_gguf: Path) -> None:
    digest = upload(store, chatml_gguf)
    run(
        store,
        "base",
        files={"model.gguf": digest},
        system="A",
        parameters={"temperature": 0.5},
        license="L1",
        messages=[{"role": "user", "content": "q"}],
    )
    base = store.load_model("base")
    statuses = run(store, "derived", **{"from": "BASE"}, parameters={"top_k": 10}, license="L2")
    d = store.load_model("derived")
    kept = [x for x in base.manifest.layers if x.media_type != media.PARAMS]
    assert statuses[: len(kept)] == [f"using existing layer {x.digest}" for x in kept]
    assert [s.split()[0] for s in statuses[len(kept) :]] == ["creating", "creating", "writing", "success"]
    assert d.params == {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.5, "top_k": 10}
    assert (d.system, d.template, d.messages) == ("A", base.template, base.messages)
    assert d.license == ["L1", "L2"]
    assert d.parent_model == "base:latest"
    assert d.model_path == base.model_path
    assert d.config.model_family == "llama" and d.config.diff_ids == [x.digest for x in d.manifest.layers]

    run(store, "d2", **{"from": "derived"}, system="B", messages=[{"role": "user", "content": "new"}])
    d2 = store.load_model("d2")
    assert d2.system == "B" and d2.messages == [{"role": "user", "content": "new"}]
    assert d2.params == d.params and d2.parent_model == "derived:latest"
    assert len(d2.manifest.layers_of(media.SYSTEM)) == 1


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({}, BadRequestError, "neither 'from' or 'files' was specified"),
        ({"from": "nope:missing"}, ModelNotFoundError, "model 'nope:missing' not found"),
        ({"from": "../bad"}, InvalidNameError, "invalid model name"),
        ({"from": "x", "quantize": "q3_Z"}, BadRequestError, "unsupported quantization type q3_Z - supported"),
        ({"from": "x", "quantization": "f16"}, BadRequestError, "unsupported quantization type f16 - supported"),
        (
            {"from": "x", "adapters": {"a": "sha256:" + "1" * 64, "b": "sha256:" + "2" * 64}},
            BadRequestError,
            "only one adapter is currently supported",
        ),
        ({"files": {"/etc/passwd": "sha256:" + "1" * 64}}, BadRequestError, "file path must be relative"),
        ({"files": {"../up.gguf": "sha256:" + "1" * 64}}, BadRequestError, "file path must be relative"),
        ({"files": {"m.gguf": "sha256:../../etc"}}, BadRequestError, "invalid digest format"),
    ],
)
def test_create_errors(store: Store, fields: dict[str, Any], error: type[CorralError], message: str) -> None:
    with pytest.raises(error, match=message):
        run(store, "target", **fields)
    assert not store.exists("target")


def test_invalid_target_name(store: Store) -> None:
    with pytest.raises(InvalidNameError, match="invalid model name"):
        run(store, "bad/../name", files={})


def test_not_gguf(store: Store, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 not a gguf" * 10)
    digest = upload(store, junk)
    with pytest.raises(BadRequestError, match=r"^supplied file was not in GGUF format$"):
        run(store, "target", files={"junk.gguf": digest})
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(write_gguf(tmp_path / "whole.gguf").read_bytes()[:200])
    with pytest.raises(BadRequestError, match=r"^supplied file was not in GGUF format$"):
        run(store, "target", files={"t.gguf": upload(store, truncated)})
    assert not store.exists("target")


def test_adapter_layer(store: Store, plain_gguf: Path, tmp_path: Path) -> None:
    base = upload(store, plain_gguf)
    adapter = upload(store, write_gguf(tmp_path / "lora.gguf", n=8))
    run(store, "with-lora", files={"m.gguf": base}, adapters={"lora.gguf": adapter})
    model = store.load_model("with-lora")
    assert model.adapters == [store.blobs.path(adapter)]


def test_recreate_removes_replaced_layers(store: Store, plain_gguf: Path) -> None:
    digest = upload(store, plain_gguf)
    run(store, "m", files={"m.gguf": digest}, system="first")
    old_system = store.load_model("m").manifest.layers_of(media.SYSTEM)[0].digest
    run(store, "m", files={"m.gguf": digest}, system="second")
    assert not store.blobs.exists(old_system)
    assert store.load_model("m").system == "second"
    assert store.blobs.exists(digest)


def test_create_killed_midway_leaves_no_manifest(store: Store, chatml_gguf: Path) -> None:
    digest = upload(store, chatml_gguf)
    gen = create_model(
        store, ModelName.parse("half"), CreateRequest.model_validate({"files": {"m.gguf": digest}})
    )
    assert next(gen).status == "parsing GGUF"
    gen.close()
    assert not store.exists("half") and stray_files(store) == []


def test_failure_during_manifest_write_leaves_nothing_half_written(
    store: Store, plain_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = upload(store, plain_gguf)
    real_replace = __import__("os").replace

    def boom(src: Any, dst: Any) -> None:
        if "manifests" in str(dst):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr("corral.store.store.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        run(store, "broken", files={"m.gguf": digest}, system="s")
    monkeypatch.undo()
    assert not store.exists("broken") and stray_files(store) == []
    for blob in store.blobs.list_names():
        assert store.blobs.exists("sha256:" + blob[7:])  # only complete, valid blobs


def test_concurrent_creates_of_one_name(store: Store, plain_gguf: Path) -> None:
    digest = upload(store, plain_gguf)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                run(store, "race", files={"m.gguf": digest}, system=f"s{i}", parameters={"seed": i})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    model = store.load_model("race")
    i = model.params["seed"]
    assert model.system == f"s{i}"
    raw = store.manifest_path(model.name).read_bytes()
    assert json.loads(raw)["schemaVersion"] == 2
    assert stray_files(store) == []
    assert len(store.list_models()) == 1
