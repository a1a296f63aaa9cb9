"""Typed native chunks end to end: the service functions yield `ChatResponse`/`GenerateResponse`,
the translators read them (and report cached prompt tokens as each API does), and the client and
CLI get them back as types with the official ollama client's dict-like access."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from corral.cli.answer import print_summary, stream_answer
from corral.client import Client
from corral.engine.base import Chunk, GenerateParams, LoadSpec
from corral.engine.fake import ScriptedEngine, ScriptedRunner
from corral.errors import CorralError
from corral.schemas.native import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse, Message
from corral.server.native.inference import chat_events, collect_chat, generate_events
from tests.appenv import Env, run, sse_data, sse_events

CACHED = 2


@dataclass
class CachingRunner(ScriptedRunner):
    """A scripted runner whose final chunk says CACHED prompt tokens came from the cache."""

    async def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        async for chunk in super().generate(params):
            if chunk.done and chunk.metrics is not None:
                chunk.metrics.prompt_cache_count = CACHED
            yield chunk


@dataclass
class CachingEngine(ScriptedEngine):
    async def load(self, spec: LoadSpec) -> ScriptedRunner:
        runner = CachingRunner(spec, list(self.words), self.delay, self.estimate(spec))
        self.runners.append(runner)
        return runner


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, engine=CachingEngine())


MSGS = [{"role": "user", "content": "one two three four"}]


# The service functions yield types ------------------------------------------------------------
def test_chat_and_generate_events_yield_typed_chunks(env: Env) -> None:
    ctx = env.app.state.ctx

    async def main() -> tuple[list[ChatResponse], list[GenerateResponse], ChatResponse]:
        chat = [c async for c in await chat_events(ctx, ChatRequest.model_validate({"model": "tiny",
                                                                                     "messages": MSGS}))]
        gen = [c async for c in await generate_events(ctx, GenerateRequest(model="tiny", prompt="a b c"))]
        joined = await collect_chat(await chat_events(ctx, ChatRequest.model_validate({"model": "tiny",
                                                                                        "messages": MSGS})))
        return chat, gen, joined

    chat, gen, joined = run(main())
    assert all(type(c) is ChatResponse and type(c.message) is Message for c in chat)
    assert all(type(c) is GenerateResponse for c in gen)
    assert "".join(c.message.content for c in chat) == "Hello world!" == "".join(c.response for c in gen)
    assert chat[-1].done and chat[-1].prompt_cache_count == CACHED and gen[-1].context is not None
    assert joined.message.content == "Hello world!" and joined.done_reason == "stop"
    assert joined.dump()["message"] == {"role": "assistant", "content": "Hello world!"}


def test_the_debug_render_stays_its_own_small_body(env: Env) -> None:
    async def main() -> dict[str, Any]:
        async with env.client() as c:
            r = await c.post("/api/chat", json={"model": "tiny", "messages": MSGS, "_debug_render_only": True})
            assert r.status_code == 200
            return dict(r.json())

    body = run(main())
    assert set(body) == {"model", "created_at", "_debug_info"} and body["created_at"].endswith("Z")
    assert body["_debug_info"] == {"rendered_template": "one two three four", "image_count": 0}


# Cached prompt tokens, as each API reports them ---------------------------------------------------
def test_openai_usage_reports_cached_prompt_tokens(env: Env) -> None:
    async def main() -> list[dict[str, Any]]:
        async with env.client() as c:
            chat = (await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS})).json()
            r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS, "stream": True,
                                                           "stream_options": {"include_usage": True}})
            streamed = sse_data(r.text)[-2]
            comp = (await c.post("/v1/completions", json={"model": "tiny", "prompt": "a b c"})).json()
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "a b c", "stream": True,
                                                      "stream_options": {"include_usage": True}})
            return [chat["usage"], streamed["usage"], comp["usage"], sse_data(r.text)[-2]["usage"]]

    for usage in run(main()):
        assert usage["prompt_tokens_details"] == {"cached_tokens": CACHED}
        parsed = openai.types.CompletionUsage.model_validate(usage)
        assert parsed.prompt_tokens_details is not None and parsed.prompt_tokens_details.cached_tokens == CACHED
        assert parsed.total_tokens == parsed.prompt_tokens + parsed.completion_tokens


def test_responses_and_messages_report_cached_prompt_tokens(env: Env) -> None:
    async def main() -> tuple[Any, ...]:
        async with env.client() as c:
            resp = (await c.post("/v1/responses", json={"model": "tiny", "input": "one two"})).json()
            msg = (await c.post("/v1/messages", json={"model": "tiny", "max_tokens": 8, "messages": MSGS})).json()
            r = await c.post("/v1/messages", json={"model": "tiny", "max_tokens": 8, "messages": MSGS,
                                                   "stream": True})
            delta = next(d for k, d in sse_events(r.text) if k == "message_delta")
            return resp, msg, delta

    resp, msg, delta = run(main())
    assert resp["usage"]["input_tokens_details"]["cached_tokens"] == CACHED
    assert openai.types.responses.Response.model_validate(resp).usage.input_tokens_details.cached_tokens == CACHED
    assert msg["usage"]["cache_read_input_tokens"] == CACHED == delta["usage"]["cache_read_input_tokens"]
    assert msg["usage"]["input_tokens"] == 4  # the whole prompt, as Ollama reports it
    assert anthropic.types.Message.model_validate(msg).usage.cache_read_input_tokens == CACHED


# The client and the CLI ----------------------------------------------------------------------------
CHAT_LINES = [
    {"model": "m", "created_at": "2026-01-01T00:00:00.123456789Z", "message": {"role": "assistant", "content": "Hi",
                                                                                "thinking": "hm"}, "done": False},
    {"model": "m", "created_at": "2026-01-01T00:00:01Z", "message": {"role": "assistant", "content": ""},
     "done": True, "done_reason": "stop", "total_duration": 5, "prompt_eval_count": 3, "prompt_cache_count": 1,
     "eval_count": 1, "eval_duration": 1_000_000_000, "frobnicate": 1},
]


def mock_client(body_lines: list[dict[str, Any]]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        text = "".join(json.dumps(x) + "\n" for x in body_lines)
        return httpx.Response(200, text=text, headers={"content-type": "application/x-ndjson"})

    return Client("http://127.0.0.1:1", transport=httpx.MockTransport(handler))


def test_client_chat_returns_typed_chunks_that_read_like_the_json() -> None:
    with mock_client(CHAT_LINES) as c:
        chunks = list(c.chat(ChatRequest.model_validate({"model": "m", "messages": MSGS})))
    first, last = chunks
    assert isinstance(first, ChatResponse) and first.message.content == "Hi" and first.message.thinking == "hm"
    assert first["message"]["content"] == "Hi" and first.get("done") is False
    assert last.message.get("thinking", "") == "" and last.get("nope") is None  # as a dict's get
    assert "thinking" in first.message and "thinking" not in last.message and "tool_calls" not in last.message
    assert last.prompt_cache_count == 1 and last["frobnicate"] == 1  # unknown fields are kept
    assert last.model_dump(mode="json", exclude_none=True)["done_reason"] == "stop"
    with pytest.raises(KeyError):
        last["message"]["tool_calls"]


def test_client_generate_typed_and_error_lines_raise() -> None:
    lines = [{"model": "m", "created_at": "2026-01-01T00:00:00Z", "response": "a", "done": False},
             {"error": "boom"}]
    with mock_client(lines) as c:
        stream = c.generate({"model": "m", "prompt": "x"})
        first = next(stream)
        assert isinstance(first, GenerateResponse) and first.response == "a" and first["response"] == "a"
        with pytest.raises(CorralError, match="boom"):
            next(stream)


def test_cli_prints_typed_answers_and_the_cache_count(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_client(CHAT_LINES) as c:
        final = stream_answer(c.chat({"model": "m", "messages": MSGS}))
    assert final is not None and final.done_reason == "stop"
    print_summary(final)
    out, err = capsys.readouterr()
    assert out == "Thinking...\nhm\n...done thinking.\n\nHi"
    assert "prompt cache count:   1 token(s)" in err and "eval rate:            1.00 tokens/s" in err
    gen = [GenerateResponse.model_validate({"model": "m", "created_at": "2026-01-01T00:00:00Z", "response": "ok",
                                            "done": True})]
    assert stream_answer(iter(gen), hide_thinking=True) is gen[0]
    assert stream_answer(iter([])) is None
