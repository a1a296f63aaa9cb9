"""/v1/chat/completions in-process over the scripted engine: request translation, response and
chunk shapes (spec §1), n > 1, per-request num_ctx, and the official SDK parsing our output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.schemas.openai import ChatCompletionRequest
from corral.server.compat.openai import to_chat_request
from corral.server.compat.openai_stream import ChatChunker
from tests.appenv import Env, run, sdk, sse_data
from tests.native_chunks import chat_chunk

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_non_stream_shape(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"].startswith("chatcmpl-") and 0 <= int(body["id"].split("-")[1]) < 999
        assert body["object"] == "chat.completion" and body["system_fingerprint"] == "fp_ollama"
        assert body["model"] == "tiny"
        assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello world!"},
                                    "finish_reason": "stop"}]
        assert body["usage"]["completion_tokens"] == 3
        u = body["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 0
        assert env.prompts == ["hi"]
    run(main())


def test_stream_chunks_finish_and_usage(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": MSGS, "stream": True, "max_tokens": 2,
                "stream_options": {"include_usage": True}})
        assert r.headers["content-type"].startswith("text/event-stream")
        data = sse_data(r.text)
        assert data[-1] == "[DONE]"
        chunks = data[:-1]
        assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "Hello world"
        finish = chunks[-2]["choices"][0]
        assert finish["delta"] == {} and finish["finish_reason"] == "length"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    run(main())


def test_sdk_parses_both_modes(env: Env) -> None:
    async def main() -> None:
        client = sdk(env)
        done = await client.chat.completions.create(model="tiny", messages=MSGS, max_completion_tokens=1)  # type: ignore[arg-type]
        assert done.choices[0].message.content == "Hello" and done.choices[0].finish_reason == "length"
        stream = await client.chat.completions.create(model="tiny", messages=MSGS, stream=True)  # type: ignore[arg-type]
        parts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
        assert "".join(parts) == "Hello world!"
        async with client.chat.completions.stream(model="tiny", messages=MSGS) as helper:  # type: ignore[arg-type]
            final = await helper.get_final_completion()
        assert final.choices[0].message.content == "Hello world!" and final.choices[0].finish_reason == "stop"
        await client.close()
    run(main())


def test_n_choices_run_concurrently(env: Env) -> None:
    env.engine.delay = 0.01

    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS, "n": 3, "seed": 7})
            s = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS, "n": 2, "stream": True})
        choices = r.json()["choices"]
        assert [ch["index"] for ch in choices] == [0, 1, 2]
        assert all(ch["message"]["content"] == "Hello world!" for ch in choices)
        assert r.json()["usage"]["completion_tokens"] == 9
        chunks = [d for d in sse_data(s.text) if d != "[DONE]"]
        for idx in (0, 1):
            mine = [ch["choices"][0] for ch in chunks if ch["choices"][0]["index"] == idx]
            assert "".join(m["delta"].get("content", "") for m in mine) == "Hello world!"
            assert mine[0]["delta"]["role"] == "assistant" and mine[-1]["finish_reason"] == "stop"
        assert len(env.engine.runners) == 1  # all sequences share one runner
    run(main())


def test_num_ctx_extra_field_and_options(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r1 = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS, "num_ctx": 512})
            r2 = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS,
                                                            "options": {"num_ctx": 1024}})
        assert r1.status_code == r2.status_code == 200
        assert [r.spec.options.num_ctx for r in env.engine.runners] == [512, 1024]
    run(main())


def test_translation_of_fields() -> None:
    req = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]},
            {"role": "assistant", "content": None, "reasoning": "hmm",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        "max_tokens": 5, "max_completion_tokens": 9, "stop": "END", "seed": 3, "frequency_penalty": 0.5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "reasoning_effort": "minimal", "logprobs": True, "top_logprobs": 2})
    native = to_chat_request(req)
    opts = native.options or {}
    assert opts["num_predict"] == 9 and opts["stop"] == ["END"] and opts["seed"] == 3
    assert opts["temperature"] == 1.0 and opts["top_p"] == 1.0 and opts["frequency_penalty"] == 0.5
    assert native.format == {"type": "object"} and native.tool_choice == "required" and native.think == "low"
    assert native.logprobs is True and native.top_logprobs == 2
    user, assistant, tool = native.messages[1:]
    assert user.content == "look" and user.images == ["aGk="]
    assert assistant.thinking == "hmm" and assistant.tool_calls is not None
    assert assistant.tool_calls[0].function.arguments == {"city": "Paris"}
    assert tool.tool_name == "get_weather" and tool.tool_call_id == "call_1"
    json_obj = ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, "temperature": 0.2,
                                                     "response_format": {"type": "json_object"},
                                                     "reasoning": {"effort": "none"}})
    native = to_chat_request(json_obj)
    assert native.format == "json" and native.think is False and (native.options or {})["temperature"] == 0.2


@pytest.mark.parametrize(("body", "status", "message", "etype"), [
    ({"model": "tiny", "messages": []}, 400, "[] is too short - 'messages'", "invalid_request_error"),
    ({"model": "nope", "messages": MSGS}, 404, "model 'nope' not found", "not_found_error"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, 400,
     "image URLs are not currently supported, please use base64 encoded data instead", "invalid_request_error"),
    ({"model": "tiny", "messages": MSGS, "reasoning_effort": "huge"}, 400, None, "invalid_request_error"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": "data:image/png;base64,aGk="}]}]}, 400,
     '"tiny" does not support images (the model has no vision projector)', "invalid_request_error"),
    ({"model": "tiny", "messages": MSGS, "top_logprobs": 30}, 400, "top_logprobs must be between 0 and 20",
     "invalid_request_error"),
    ({"model": "tiny"}, 400, "[] is too short - 'messages'", "invalid_request_error"),
    ({"messages": MSGS}, 400, None, "invalid_request_error"),
])
def test_errors_in_openai_format(env: Env, body: dict[str, Any], status: int, message: str | None,
                                 etype: str) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["type"] == etype and err["param"] is None and err["code"] is None
        if message is not None:
            assert err["message"] == message
    run(main())


def test_unknown_fields_are_accepted_and_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS, "frobnicate": 1})
        assert r.status_code == 200
    run(main())
    assert any("frobnicate" in rec.getMessage() for rec in caplog.records)


def test_chunker_tool_calls_reasoning_and_logprobs() -> None:
    ck = ChatChunker("m", 1, include_usage=False, want_logprobs=True)
    first = ck.convert(0, chat_chunk({"message": {"content": "", "thinking": "think"}, "done": False}))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning": "think"}
    lp = [{"token": "A", "logprob": -0.1, "bytes": [65]}]
    text = ck.convert(0, chat_chunk({"message": {"content": "A"}, "logprobs": lp, "done": False}))
    assert text[0]["choices"][0]["logprobs"] == {"content": [{**lp[0], "top_logprobs": []}]}
    bare = ck.convert(0, chat_chunk({"message": {"content": "B"}, "logprobs": [{"token": "B", "logprob": -1.0}],
                                     "done": False}))
    assert bare[0]["choices"][0]["logprobs"]["content"][0]["bytes"] is None
    call = {"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    last = ck.convert(0, chat_chunk({"message": {"content": "", "tool_calls": [call]}, "done": True,
                                     "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 2}))
    assert last[0]["choices"][0]["delta"]["tool_calls"] == [
        {"id": "call_x", "index": 0, "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]
    assert last[-1]["choices"][0]["finish_reason"] == "tool_calls" and last[-1]["choices"][0]["delta"] == {}
