"""Native responses are built as their wire types (corral/schemas/native.py): what the server sends
is exactly what the type dumps, and `corral.client.Client` returns it as that type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from corral.client import Client
from corral.engine.base import Chunk, TokenLogprob, TopLogprob
from corral.schemas.native import (
    ChatResponse,
    EmbeddingResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateResponse,
    ProcessResponse,
)
from corral.server.native.embeddings import embed_response
from corral.server.native.inference import token_logprobs
from tests.appenv import Env, lines, run


def test_ps_and_embedding_bodies_are_their_types(tmp_path: Path) -> None:
    env = Env(tmp_path)

    async def main() -> tuple[Any, Any, Any, Any]:
        async with env.client() as c:
            assert (await c.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})).is_success
            ps = (await c.get("/api/ps")).json()
            emb = (await c.post("/api/embed", json={"model": "tiny", "input": ["a", "b"]})).json()
            empty = (await c.post("/api/embed", json={"model": "tiny", "input": []})).json()
            legacy = (await c.post("/api/embeddings", json={"model": "tiny", "prompt": "a"})).json()
        return ps, emb, empty, legacy

    ps, emb, empty, legacy = run(main())
    assert ProcessResponse.model_validate(ps).dump() == ps
    assert set(ps["models"][0]) == {"name", "model", "size", "digest", "details", "expires_at", "size_vram",
                                    "context_length"}
    assert ps["models"][0]["expires_at"].endswith("Z")
    assert EmbedResponse.model_validate(emb).dump() == emb and len(emb["embeddings"]) == 2
    assert set(emb) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert empty == {"model": "tiny", "embeddings": []}
    assert EmbeddingResponse.model_validate(legacy).dump() == legacy and legacy["embedding"]


def test_the_openai_layer_reads_the_typed_embed_result(tmp_path: Path) -> None:
    env = Env(tmp_path)
    result = run(embed_response(env.app.state.ctx, EmbedRequest(model="tiny", input="a")))
    assert isinstance(result, EmbedResponse) and len(result.embeddings) == 1 and result.prompt_eval_count


def test_client_returns_typed_ps_and_embed() -> None:
    ps = {"models": [{"name": "m:latest", "model": "m:latest", "size": 5, "digest": "sha256:" + "a" * 64,
                      "details": {"family": "llama"}, "expires_at": "2030-01-02T03:04:05Z", "size_vram": 0,
                      "context_length": 2048}]}
    emb = {"model": "m", "embeddings": [[0.6, 0.8]], "total_duration": 1, "load_duration": 0, "prompt_eval_count": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=ps if request.url.path == "/api/ps" else emb)

    with Client("http://127.0.0.1:1", transport=httpx.MockTransport(handler)) as c:
        got = c.ps()
        vec = c.embed({"model": "m", "input": "x"})
    assert got.models[0].context_length == 2048 and got.models[0].details.family == "llama"
    assert got.models[0].expires_at.year == 2030 and got.dump()["models"][0]["expires_at"] == "2030-01-02T03:04:05Z"
    assert vec.embeddings == [[0.6, 0.8]] and vec.prompt_eval_count == 1


def test_generate_and_chat_chunks_are_their_types(tmp_path: Path) -> None:
    env = Env(tmp_path)
    ask = {"model": "tiny", "options": {"num_predict": 3}, "logprobs": True, "top_logprobs": 2}

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
        async with env.client() as c:
            gen = await lines(c, "/api/generate", {**ask, "prompt": "hi"})
            chat = await lines(c, "/api/chat", {**ask, "messages": [{"role": "user", "content": "hi"}]})
            unload = (await c.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": 0})).json()
        return gen, chat, unload

    gen, chat, unload = run(main())
    assert all(GenerateResponse.model_validate(x).dump() == x for x in gen)
    assert all(ChatResponse.model_validate(x).dump() == x for x in chat)
    assert set(gen[-1]) >= {"model", "created_at", "response", "done", "done_reason", "total_duration",
                            "load_duration", "prompt_eval_count", "eval_count", "eval_duration", "context"}
    assert set(gen[0]) <= {"model", "created_at", "response", "done", "logprobs"} and gen[0]["done"] is False
    assert chat[0]["message"]["role"] == "assistant" and "context" not in chat[-1]
    assert unload["message"] == {"role": "assistant", "content": ""} and unload["done_reason"] == "unload"


def test_logprobs_omit_empty_bytes_and_alternatives_as_go_does() -> None:
    chunk = Chunk(text="ab", logprobs=[
        TokenLogprob(token="a", logprob=-0.5, bytes=[97],
                     top_logprobs=[TopLogprob("a", -0.5, [97]), TopLogprob("", -2.0)]),
        TokenLogprob(token="b", logprob=-1.0),
    ])
    assert [lp.dump() for lp in token_logprobs(chunk)] == [
        {"token": "a", "logprob": -0.5, "bytes": [97],
         "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "", "logprob": -2.0}]},
        {"token": "b", "logprob": -1.0},
    ]
