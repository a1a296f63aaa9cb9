"""/v1/responses (stateless) and /v1/messages (Anthropic) in-process over the scripted engine:
request translation, response objects, streamed event sequences, error formats, and the
official SDKs' parsers accepting our output."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from corral.schemas.anthropic import MessagesRequest
from corral.schemas.openai import ResponsesRequest
from corral.server.compat import anthropic as anth
from corral.server.compat import responses as resp
from tests.appenv import BASE, Env, run, sse_events
from tests.native_chunks import chat_chunk

CALL = {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def http(env: Env) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url=BASE)


# Responses ---------------------------------------------------------------------------------------
def test_responses_non_stream_via_sdk(env: Env) -> None:
    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=BASE + "/v1", api_key="x", http_client=http(env), max_retries=0)
        r = await client.responses.create(model="tiny", input="hi", instructions="Sys.", max_output_tokens=2)
        assert r.output_text == "Hello world" and r.status == "incomplete"
        assert r.usage is not None and r.usage.output_tokens == 2
        full = await client.responses.create(model="tiny", input="hi")
        assert full.status == "completed" and full.output[0].type == "message"
        assert env.prompts == ["[Sys.] hi", "hi"]
        await client.close()
    run(main())


def test_responses_stream_event_sequence(env: Env) -> None:
    async def main() -> None:
        async with http(env) as c:
            r = await c.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": True})
        events = sse_events(r.text)
        kinds = [k for k, _ in events]
        assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"]
        assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                              "response.output_item.done", "response.completed"]
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
        assert "".join(d["delta"] for k, d in events if k == "response.output_text.delta") == "Hello world!"
        final = events[-1][1]["response"]
        assert final["output"][0]["content"][0]["text"] == "Hello world!" and final["status"] == "completed"
        client = openai.AsyncOpenAI(base_url=BASE + "/v1", api_key="x", http_client=http(env), max_retries=0)
        stream = await client.responses.create(model="tiny", input="hi", stream=True)
        types = [ev.type async for ev in stream]
        assert types[-1] == "response.completed"
        # the SDK's stream helper accumulates the events and checks their order and indices
        async with client.responses.stream(model="tiny", input="hi") as helper:
            final = await helper.get_final_response()
        assert final.output_text == "Hello world!"
        await client.close()
    run(main())


def test_responses_tool_calls_and_reasoning_events() -> None:
    rb = resp.ResponseBuilder(ResponsesRequest(model="m", input="x"))
    frames = rb.convert(chat_chunk({"message": {"thinking": "hmm", "content": ""}, "done": False}))
    frames += rb.convert(chat_chunk({"message": {"content": "", "tool_calls": [CALL]}, "done": True,
                                     "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 5}))
    events = sse_events(b"".join(frames).decode())
    kinds = [k for k, _ in events]
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds[-4:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done"]
    body = rb.response(rb.final_status())
    assert [o["type"] for o in body["output"]] == ["reasoning", "function_call"]
    call = body["output"][1]
    assert call["call_id"] == "call_1" and call["name"] == "get_weather" and call["arguments"] == '{"city": "Paris"}'
    assert body["usage"]["total_tokens"] == 8
    assert openai.types.responses.Response.model_validate(body).output[1].type == "function_call"


def test_responses_input_items_translate() -> None:
    req = ResponsesRequest.model_validate({
        "model": "m", "instructions": "be nice", "max_output_tokens": 7, "reasoning": {"effort": "high"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"}]})
    native = resp.to_chat_request(req)
    assert [m.role for m in native.messages] == ["system", "user", "assistant", "tool"]
    assert native.messages[2].tool_calls is not None
    assert native.messages[2].tool_calls[0].function.arguments == {"city": "Rome"}
    assert native.messages[3].tool_call_id == "c1" and native.messages[3].content == "rain"
    assert native.format == {"type": "object"} and native.think == "high"
    assert (native.options or {})["num_predict"] == 7
    assert native.tools is not None and native.tools[0].function.name == "get_weather"


def test_responses_rejects_state(env: Env) -> None:
    async def main() -> None:
        async with http(env) as c:
            r = await c.post("/v1/responses", json={"model": "tiny", "input": "x", "previous_response_id": "r1"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert "stateless" in r.json()["error"]["message"]
    run(main())


# Anthropic ---------------------------------------------------------------------------------------
def anthropic_client(env: Env) -> anthropic.AsyncAnthropic:
    import httpx2  # the anthropic SDK ships its own fork of httpx

    transport = httpx2.ASGITransport(app=env.app)
    client = httpx2.AsyncClient(transport=transport, base_url=BASE)
    return anthropic.AsyncAnthropic(base_url=BASE, api_key="x", http_client=client, max_retries=0)


def test_messages_non_stream_and_stream_via_sdk(env: Env) -> None:
    async def main() -> None:
        client = anthropic_client(env)
        msg = await client.messages.create(model="tiny", max_tokens=2, system="Sys.",
                                           thinking={"type": "enabled", "budget_tokens": 1024},
                                           messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].type == "text" and msg.content[0].text == "Hello world"
        assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2 and msg.id.startswith("msg_")
        assert len(msg.content) == 1  # thinking was relaxed for a model without it, as Ollama does
        async with client.messages.stream(model="tiny", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "Hello world!" and final.stop_reason == "end_turn"
        assert env.prompts[0] == "[Sys.] hi"
        await client.close()
    run(main())


def test_messages_stream_event_sequence(env: Env) -> None:
    async def main() -> None:
        async with http(env) as c:
            r = await c.post("/v1/messages", json={"model": "tiny", "max_tokens": 9, "stream": True,
                                                   "messages": [{"role": "user", "content": "hi"}]})
        kinds = [k for k, _ in sse_events(r.text)]
        assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
        assert sse_events(r.text)[0][1]["message"]["usage"]["input_tokens"] >= 1
        assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        assert set(kinds[2:-3]) == {"content_block_delta"}
    run(main())


def test_messages_tool_use_events_and_collect() -> None:
    events = anth.EventStream("msg_1", "m")
    frames = events.convert(chat_chunk({"message": {"content": "Let me check."}, "done": False}))
    frames += events.convert(chat_chunk({"message": {"content": "", "tool_calls": [CALL]}, "done": True,
                                         "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 4}))
    parsed = sse_events(b"".join(frames).decode())
    starts = [d["content_block"]["type"] for k, d in parsed if k == "content_block_start"]
    assert starts == ["text", "tool_use"]
    delta = next(d for k, d in parsed if k == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 4
    json_delta = next(d for k, d in parsed if d.get("delta", {}).get("type") == "input_json_delta")
    assert json_delta["delta"]["partial_json"] == '{"city": "Paris"}' and json_delta["index"] == 1

    async def chunks() -> Any:
        yield chat_chunk({"message": {"content": "", "tool_calls": [CALL]}, "done": True, "done_reason": "stop"})
    body = asyncio.run(anth.collect("msg_1", "m", chunks()))
    assert body["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert body["stop_reason"] == "tool_use"
    assert anthropic.types.Message.model_validate(body).content[0].type == "tool_use"


def test_messages_translation() -> None:
    req = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "S"}], "stop_sequences": ["X"],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"},
        "thinking": {"type": "enabled", "budget_tokens": 100},
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "snow"},
                                         {"type": "text", "text": "and tomorrow?"}]}]})
    native = anth.to_chat_request(req)
    assert [m.role for m in native.messages] == ["system", "user", "assistant", "tool", "user"]
    assert native.messages[3].content == "snow" and native.messages[3].tool_call_id == "t1"
    assert native.options == {"num_predict": 10, "stop": ["X"]}
    assert native.tool_choice == "required" and native.think is True


@pytest.mark.parametrize(("body", "status", "etype"), [
    ({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 404, "not_found_error"),
    ({"model": "tiny", "max_tokens": 5, "messages": []}, 400, "invalid_request_error"),
    ({"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x"}}]}]}, 400, "invalid_request_error"),
])
def test_messages_errors(env: Env, body: dict[str, Any], status: int, etype: str) -> None:
    async def main() -> None:
        async with http(env) as c:
            r = await c.post("/v1/messages", json=body)
        assert r.status_code == status
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == etype and err["request_id"].startswith("req_")
        client = anthropic_client(env)
        with pytest.raises(anthropic.APIStatusError) as exc:
            await client.messages.create(**body)
        assert exc.value.status_code == status
        await client.close()
    run(main())


    from corral.errors import CorralError
    from corral.server.errors import anthropic_error_body
    got = {s: anthropic_error_body(CorralError("m", status=s))["error"]["type"]
           for s in (400, 401, 403, 404, 429, 500, 503, 529)}
    assert got == {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
                   529: "overloaded_error"}


def test_messages_requires_max_tokens_and_responses_checks_arguments(env: Env) -> None:
    async def main() -> None:
        async with http(env) as c:
            r = await c.post("/v1/messages", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400
            assert r.json()["error"]["message"] == "max_tokens is required and must be positive"
            r = await c.post("/v1/responses", json={"model": "tiny", "input": [
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}]})
            assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid function_call arguments")
    run(main())
