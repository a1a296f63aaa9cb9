"""The /v1 APIs driven by the official `openai` and `anthropic` Python clients against a real
`corral serve` with smollm2:135m (sync and async, streaming and not, tools, json_schema,
embeddings, models, errors as the SDKs' exception types). Generations are kept short."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Literal

import anthropic
import httpx
import openai
import pydantic
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
TOOLS_MODEL = "smoltools:latest"
HI = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A ChatML template with a tools section, so the model gains the `tools` capability (spec §1).
TOOLS_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- if .Tools }}<|im_start|>system\nYou can call these tools:\n<tools>\n{{ range .Tools }}{{ .Function }}\n"
    "{{ end }}</tools>\nCall one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call><|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}{{ range .ToolCalls }}<tool_call>"
    "{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}</tool_call>{{ end }}"
    "<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tools_model(server: ServerProcess) -> str:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        r = c.post("/api/create", json={"model": TOOLS_MODEL, "from": MODEL, "template": TOOLS_TEMPLATE,
                                        "stream": False})
        assert r.status_code == 200, r.text
        assert "tools" in c.post("/api/show", json={"model": TOOLS_MODEL}).json()["capabilities"]
    return TOOLS_MODEL


def test_chat_sync_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, seed=1)  # type: ignore[arg-type]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.system_fingerprint == "fp_ollama"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5


def test_chat_sync_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 6


def test_chat_async_both_modes_and_n(server: ServerProcess) -> None:
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c:
            r = await c.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, n=2,  # type: ignore[arg-type]
                                                temperature=0.9, seed=5)
            assert [ch.index for ch in r.choices] == [0, 1] and all(ch.message.content for ch in r.choices)
            stream = await c.chat.completions.create(model=MODEL, messages=HI, max_tokens=6,  # type: ignore[arg-type]
                                                     stream=True)
            parts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
            assert "".join(parts)
    asyncio.run(main())


def test_chat_json_schema(client: openai.OpenAI) -> None:
    class Pick(pydantic.BaseModel):
        color: Literal["red", "blue"]

    # the SDK's parse() sends a strict json_schema response_format and validates the answer itself
    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Pick a color."}],
                                      max_tokens=16, response_format=Pick)
    parsed = r.choices[0].message.parsed
    assert parsed is not None and parsed.color in ("red", "blue")
    obj = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A JSON object."}],
                                         max_tokens=16, response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)


def test_completions_and_embeddings(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=5)
    assert r.object == "text_completion" and r.choices[0].text and r.usage is not None
    floats = client.embeddings.create(model=MODEL, input=["hello", "world"], encoding_format="float")
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 576
    default = client.embeddings.create(model=MODEL, input="hello", dimensions=64)  # SDK asks for base64
    assert len(default.data[0].embedding) == 64
    assert sum(v * v for v in default.data[0].embedding) == pytest.approx(1.0, rel=1e-4)
    assert floats.data[0].embedding[:3] != floats.data[1].embedding[:3]


def test_models_and_errors(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.owned_by == "library"
    with pytest.raises(openai.NotFoundError) as nf:
        client.models.retrieve("no-such-model")
    assert nf.value.body["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[])
    assert "too short" in bad.value.message
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="x", encoding_format="int8")  # type: ignore[arg-type]


def test_responses_api(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=6)
    assert r.output_text and r.usage is not None and r.usage.output_tokens <= 6
    events = [e.type for e in client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, stream=True)]
    assert events[0] == "response.created" and "response.output_text.delta" in events
    assert events[-1] in ("response.completed", "response.incomplete")


def test_anthropic_messages(server: ServerProcess) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as c:
        msg = c.messages.create(model=MODEL, max_tokens=6, system="Be brief.",
                                messages=[{"role": "user", "content": "Say hello."}])
        assert msg.type == "message" and msg.content[0].type == "text" and msg.content[0].text
        assert msg.stop_reason in ("end_turn", "max_tokens") and 0 < msg.usage.output_tokens <= 6
        with c.messages.stream(model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "Hi"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text and final.content[0].type == "text" and final.content[0].text == text
        with pytest.raises(anthropic.NotFoundError) as nf:
            c.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
        assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError):
            c.messages.create(model=MODEL, max_tokens=4, messages=[])


def test_chat_tools_with_tool_choice(client: openai.OpenAI, tools_model: str) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=tools_model, messages=messages, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       max_tokens=32, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]
    stream = client.chat.completions.create(model=tools_model, messages=messages, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
                                            tool_choice="required", max_tokens=32, stream=True)
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function is not None and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # and the tool result goes back in
    follow = [*messages, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    again = client.chat.completions.create(model=tools_model, messages=follow, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
                                           tool_choice="none", max_tokens=4)
    assert again.choices[0].finish_reason in ("stop", "length") and again.choices[0].message.content


def test_anthropic_tool_use(server: ServerProcess, tools_model: str) -> None:
    tool = {"name": "get_weather", "description": "Get the weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"]}  # type: ignore[index]
    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as c:
        msg = c.messages.create(model=tools_model, max_tokens=32, tools=[tool],  # type: ignore[list-item]
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "Weather in Oslo?"}])
        assert msg.stop_reason == "tool_use"
        use = next(b for b in msg.content if b.type == "tool_use")
        assert use.name == "get_weather" and "city" in use.input  # type: ignore[operator]
        reply = c.messages.create(model=tools_model, max_tokens=4, tools=[tool],  # type: ignore[list-item]
                                  messages=[{"role": "user", "content": "Weather in Oslo?"},
                                            {"role": "assistant", "content": msg.content},  # type: ignore[typeddict-item]
                                            {"role": "user", "content": [{"type": "tool_result",
                                                                          "tool_use_id": use.id, "content": "snow"}]}])
        assert reply.content
