"""Native API routes in-process (httpx ASGITransport) over the scripted engine: wire shapes,
status codes and error texts of spec §1, without a model."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.appenv import Env, lines, run


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, system="Be brief.")


def test_generate_streams_ndjson_with_final_metrics(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            chunks = await lines(c, "/api/generate", {"model": "tiny", "prompt": "hello"})
        assert "".join(ch["response"] for ch in chunks) == "Hello world!"
        assert all(not ch["done"] for ch in chunks[:-1])
        final = chunks[-1]
        assert final["done"] is True and final["done_reason"] == "stop"
        for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration",
                    "prompt_cache_count", "context"):
            assert key in final
        assert env.engine.runners[0].prompts == ["[Be brief.] hello"]
    run(main())


def test_generate_non_stream_and_system_override(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "system": "Other.",
                                                    "stream": False})
        body = r.json()
        assert r.headers["content-type"] == "application/json"
        assert body["response"] == "Hello world!" and body["done"] is True
        assert env.engine.runners[0].prompts == ["[Other.] x"]
    run(main())


def test_raw_skips_the_template_and_num_predict_gives_length(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "RAW", "raw": True, "stream": False,
                                                    "options": {"num_predict": 1}})
        assert r.json()["done_reason"] == "length" and r.json()["response"] == "Hello"
        assert "context" not in r.json()
        assert env.engine.runners[0].prompts == ["RAW"]
    run(main())


def test_chat_shapes(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            chunks = await lines(c, "/api/chat", {"model": "tiny", "messages": [{"role": "User", "content": "hi"}]})
            r = await c.post("/api/chat", json={"model": "tiny", "stream": False,
                                                "messages": [{"role": "user", "content": "hi"}]})
        assert all(ch["message"]["role"] == "assistant" for ch in chunks)
        assert "".join(ch["message"]["content"] for ch in chunks) == "Hello world!"
        assert r.json()["message"] == {"role": "assistant", "content": "Hello world!"}
        assert env.engine.runners[0].prompts[0] == "[Be brief.] hi"
    run(main())


def test_debug_render_only_renders_without_generating(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "q", "_debug_render_only": True})
        assert r.json()["_debug_info"]["rendered_template"] == "[Be brief.] q"
        assert not env.engine.runners
    run(main())


def test_load_then_unload_with_keep_alive_zero(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/generate", json={"model": "tiny", "stream": False})
            assert r.json()["done_reason"] == "load"
            ps = (await c.get("/api/ps")).json()["models"]
            assert [m["name"] for m in ps] == ["tiny:latest"]
            assert ps[0]["context_length"] == 2048  # clamped to the model's trained context
            r = await c.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": 0, "stream": False})
            assert r.json()["done_reason"] == "unload"
            assert r.json()["message"] == {"role": "assistant", "content": ""}
            assert (await c.get("/api/ps")).json()["models"] == []
    run(main())


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/generate", {"model": "bad/../name", "prompt": "x"}, 400, "invalid model name"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "top_logprobs": 21}, 400,
         "top_logprobs must be between 0 and 20"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "raw": True, "system": "s"}, 400,
         "raw mode does not support template, system, or context"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "think": "extreme"}, 400, "invalid think value: 'extreme'"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "think": True}, 400, '"tiny" does not support thinking'),
        ("/api/generate", {"model": "tiny", "prompt": "x", "images": ["aGk="]}, 400,
         '"tiny" does not support images (the model has no vision projector)'),
        ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"top_k": "many"}}, 400,
         'option "top_k" must be of type integer'),
        ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "3600"}, 400, None),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
         "registry.ollama.ai/library/tiny:latest does not support tools"),
        ("/api/embed", {"model": "tiny", "input": 5}, 400, "invalid input type"),
        ("/api/generate", {"prompt": "x"}, 400, None),
    ],
)
def test_errors(env: Env, path: str, body: dict[str, Any], status: int, message: str | None) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post(path, json=body)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"error"}
        if message:
            assert r.json()["error"] == message
    run(main())


def test_missing_body_is_400(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/generate")
        assert r.status_code == 400 and r.json()["error"] == "missing request body"
    run(main())


def test_embed_normalises_and_truncates_dimensions(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/embed", json={"model": "tiny", "input": ["abcd", "xy"]})
            d = await c.post("/api/embed", json={"model": "tiny", "input": "abcd", "dimensions": 2})
            legacy = await c.post("/api/embeddings", json={"model": "tiny", "prompt": "abcd"})
            empty = await c.post("/api/embed", json={"model": "tiny", "input": []})
        vecs = r.json()["embeddings"]
        assert len(vecs) == 2 and all(math.isclose(sum(v * v for v in vec), 1.0) for vec in vecs)
        assert r.json()["prompt_eval_count"] == 2
        assert len(d.json()["embeddings"][0]) == 2
        assert math.isclose(sum(v * v for v in d.json()["embeddings"][0]), 1.0)
        assert legacy.json()["embedding"] == [4.0, 1.0, 2.0]  # raw, not normalised
        assert empty.json() == {"model": "tiny", "embeddings": []}
    run(main())


def test_queue_overflow_is_503_and_server_recovers(tmp_path: Path) -> None:
    env = Env(tmp_path, system="Be brief.", max_queue=2, num_parallel=1)
    env.engine.delay = 0.05

    async def main() -> None:
        async with env.client() as c:
            async def one() -> int:
                r = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
                return r.status_code

            await one()
            codes = await asyncio.gather(*[one() for _ in range(8)])
            assert sorted(codes) == [200] * 3 + [503] * 5
            assert await one() == 200
    run(main())


def test_streams_can_be_closed_early(env: Env) -> None:
    env.engine.delay = 0.02

    async def main() -> None:
        async with env.client() as c:
            async with c.stream("POST", "/api/generate", json={"model": "tiny", "prompt": "x"}) as r:
                it: AsyncIterator[str] = r.aiter_lines()
                first = json.loads(await anext(it))
                assert first["response"] == "Hello"
        await asyncio.sleep(0.1)
        assert env.scheduler.loaded and next(iter(env.scheduler.loaded.values())).refcount == 0
    run(main())


def test_corral_num_thread_is_the_default_runner_thread_count(tmp_path: Path) -> None:
    env = Env(tmp_path, system="Be brief.", num_thread=3)

    async def main() -> None:
        async with env.client() as c:
            await c.post("/api/generate", json={"model": "tiny", "stream": False})
            assert env.engine.runners[-1].spec.options.num_thread == 3
            await c.post("/api/generate", json={"model": "tiny", "stream": False, "options": {"num_thread": 1}})
            assert env.engine.runners[-1].spec.options.num_thread == 1  # a request option wins (reload)
    run(main())
