"""/api/tokenize, /api/detokenize, /api/rerank, /v1/rerank and per-request LoRA scales in-process
(httpx ASGITransport) over the scripted engine: request shapes, ordering, status codes and texts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter

from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.names import ModelName
from corral.scheduler import Scheduler
from corral.schemas.native import CreateRequest
from corral.server.app import create_app
from corral.store.create import create_model
from corral.store.store import Store
from tests.ggufs import write_gguf


def write_ranker(path: Path, pooling: int) -> Path:
    w = GGUFWriter(str(path), "bert")
    w.add_context_length(512)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_uint32("bert.pooling_type", pooling)
    w.add_tensor("token_embd.weight", np.zeros(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_adapter(path: Path, name: str) -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("general.name", name)
    w.add_string("adapter.type", "lora")
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((2, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make(store: Store, name: str, gguf: Path, adapter: Path | None = None) -> None:
    fields: dict[str, Any] = {"model": name, "files": {"m.gguf": store.blobs.add_file(gguf)[0]}}
    if adapter is not None:
        fields["adapters"] = {"a.gguf": store.blobs.add_file(adapter)[0]}
    for _ in create_model(store, ModelName.parse(name), CreateRequest.model_validate(fields)):
        pass


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(tmp_path / "models")
        settings = Settings(home=tmp_path)
        self.engine = ScriptedEngine()
        scheduler = Scheduler(self.engine, settings)
        self.app = create_app(settings, self.store, scheduler=scheduler, prune_on_start=False)
        make(self.store, "tiny", write_gguf(tmp_path / "tiny.gguf"))
        make(self.store, "ranker", write_ranker(tmp_path / "ranker.gguf", 4))
        make(self.store, "embedder", write_ranker(tmp_path / "embedder.gguf", 1))
        make(self.store, "tuned", write_gguf(tmp_path / "tuned.gguf"), write_adapter(tmp_path / "a.gguf", "my-lora"))
        self.adapter_digest = self.store.load_model("tuned").adapters[0].name.removeprefix("sha256-")

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        async def main() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
                return await c.post(path, json=body)

        return asyncio.run(main())


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# tokenize / detokenize --------------------------------------------------------------------------
def test_tokenize_and_detokenize(env: Env) -> None:
    r = env.post("/api/tokenize", {"model": "tiny", "content": "ab cde f"})
    assert r.status_code == 200 and r.json() == {"tokens": [2, 3, 1]}
    special = env.post("/api/tokenize", {"model": "tiny", "prompt": "ab", "add_special": True})
    assert special.json() == {"tokens": [1, 2]}
    r = env.post("/api/detokenize", {"model": "tiny", "tokens": [2, 1]})
    assert r.status_code == 200 and r.json() == {"content": "xx x"}
    assert env.post("/api/detokenize", {"model": "tiny", "tokens": []}).json() == {"content": ""}
    pieces = env.post("/api/tokenize", {"model": "tiny", "content": "ab abcde", "with_pieces": True})
    assert pieces.json() == {"tokens": [{"id": 2, "piece": "xx"}, {"id": 5, "piece": [0xC3]}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/tokenize", {"model": "nope", "content": "a"}, 404, "model 'nope' not found"),
        ("/api/tokenize", {"model": "tiny"}, 400, "'content' is required"),
        ("/api/tokenize", {"model": "tiny", "content": 5}, 400, "'content' must be a string"),
        ("/api/detokenize", {"model": "nope", "tokens": [1]}, 404, "model 'nope' not found"),
        ("/api/detokenize", {"model": "tiny", "tokens": ["x"]}, 400, "tokens"),
    ],
)
def test_tokenize_errors(env: Env, path: str, body: dict[str, Any], status: int, message: str) -> None:
    r = env.post(path, body)
    assert r.status_code == status and message in r.json()["error"], r.text


# rerank -------------------------------------------------------------------------------------------
DOCS = ["the dog", "cats and dogs and the cat", "a cat", {"text": "stocks"}]


@pytest.mark.parametrize("path", ["/api/rerank", "/v1/rerank"])
def test_rerank_sorts_and_cuts_to_top_n(env: Env, path: str) -> None:
    r = env.post(path, {"model": "ranker", "query": "the cat", "documents": DOCS, "top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    # scripted scores: words of the query in the document: 1, 2, 1, 0 (ties keep document order)
    assert [(x["index"], x["relevance_score"]) for x in body["results"]] == [(1, 2.0), (0, 1.0), (2, 1.0)]
    assert body["model"] == "ranker" and body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
    assert "document" not in body["results"][0]
    full = env.post(path, {"model": "ranker", "query": "the cat", "texts": DOCS, "return_documents": True}).json()
    texts = [x["document"]["text"] for x in full["results"]]
    assert texts == ["cats and dogs and the cat", "the dog", "a cat", "stocks"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "tiny", "query": "q", "documents": ["a"]}, 400, '"tiny" does not support reranking'),
        ({"model": "embedder", "query": "q", "documents": ["a"]}, 400, '"embedder" does not support reranking'),
        ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "model 'nope' not found"),
        ({"model": "ranker", "documents": ["a"]}, 400, '"query" must be a non-empty string'),
        ({"model": "ranker", "query": "q"}, 400, '"documents" must be a non-empty array'),
        ({"model": "ranker", "query": "q", "documents": []}, 400, '"documents" must be a non-empty array'),
        ({"model": "ranker", "query": "q", "documents": [1]}, 400, 'each of "documents" must be a string'),
        ({"model": "ranker", "query": "q", "documents": ["a"], "top_n": 0}, 400, '"top_n" must be at least 1'),
    ],
)
def test_rerank_errors(env: Env, body: dict[str, Any], status: int, message: str) -> None:
    r = env.post("/api/rerank", body)
    assert r.status_code == status and message in r.json()["error"], r.text
    v1 = env.post("/v1/rerank", body)
    assert v1.status_code == status and message in v1.json()["error"]["message"]


# per-request LoRA scales ---------------------------------------------------------------------------
def generated_lora(env: Env, path: str, body: dict[str, Any]) -> tuple[float, ...] | None:
    r = env.post(path, {"model": "tuned", "stream": False, **body})
    assert r.status_code == 200, r.text
    runner = next(x for x in env.engine.runners if x.params)
    return runner.params[-1].lora


def test_lora_scales_reach_the_runner(env: Env) -> None:
    gen = {"prompt": "hi"}
    assert generated_lora(env, "/api/generate", gen) is None
    assert generated_lora(env, "/api/generate", {**gen, "lora": [{"id": 0, "scale": 0.5}]}) == (0.5,)
    assert generated_lora(env, "/api/generate", {**gen, "lora": []}) == (0.0,)  # unnamed adapters: scale 0
    by_name = {**gen, "adapters": [{"name": "my-lora", "scale": 2}]}
    assert generated_lora(env, "/api/generate", by_name) == (2.0,)
    by_digest = {**gen, "adapters": [{"name": "sha256:" + env.adapter_digest[:12], "scale": 0.25}]}
    assert generated_lora(env, "/api/generate", by_digest) == (0.25,)
    chat = {"messages": [{"role": "user", "content": "hi"}], "adapters": [{"index": 0, "scale": 0}]}
    assert generated_lora(env, "/api/chat", chat) == (0.0,)
    v1 = {"messages": [{"role": "user", "content": "hi"}], "lora": [{"id": 0, "scale": 0.75}]}
    assert generated_lora(env, "/v1/chat/completions", v1) == (0.75,)
    assert generated_lora(env, "/v1/completions", {"prompt": "hi", "lora": [{"id": 0, "scale": 1.5}]}) == (1.5,)
    in_options = {**gen, "options": {"temperature": 0, "lora": [{"id": 0, "scale": 0.125}]}}  # Ollama's clients
    assert generated_lora(env, "/api/generate", in_options) == (0.125,)
    assert len(env.engine.runners) == 1  # scales never reload the model


@pytest.mark.parametrize(
    ("model", "lora", "message"),
    [
        ("tuned", [{"id": 1, "scale": 1}], "invalid adapter id 1: this model has 1 LoRA adapter(s), ids 0 to 0"),
        ("tuned", [{"id": 0}], "invalid LoRA scale None"),
        ("tuned", [{"id": 0, "scale": "x"}], "invalid LoRA scale 'x'"),
        ("tuned", [{"scale": 1}], "exactly one of 'id', 'index' or 'name'"),
        ("tuned", [{"name": "other", "scale": 1}], "no LoRA adapter named 'other'"),
        ("tuned", {"id": 0}, "'lora' must be an array"),
        ("tiny", [{"id": 0, "scale": 1}], "this model has no LoRA adapters"),
    ],
)
def test_lora_errors(env: Env, model: str, lora: Any, message: str) -> None:
    r = env.post("/api/generate", {"model": model, "prompt": "hi", "stream": False, "lora": lora})
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_lora_scales_set_twice_are_a_400(env: Env) -> None:
    both = {"lora": [{"id": 0, "scale": 1}], "adapters": [{"id": 0, "scale": 1}]}
    r = env.post("/api/generate", {"model": "tuned", "prompt": "hi", "stream": False, **both})
    assert r.status_code == 400 and "set the LoRA scales once" in r.json()["error"]
    twice = {"lora": [{"id": 0, "scale": 1}], "options": {"lora": [{"id": 0, "scale": 0}]}}
    r = env.post("/api/generate", {"model": "tuned", "prompt": "hi", "stream": False, **twice})
    assert r.status_code == 400 and "set the LoRA scales once" in r.json()["error"]
