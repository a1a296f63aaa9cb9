"""The bundled smollm2:135m is Ollama's smollm2:135m: its library template renders `.Tools`, so it
has the `tools` capability, and tool requests work on it through the native API and the official
`openai` and `ollama` clients (Open WebUI sends tools with every chat)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

from corral.modelfile import format_parameters
from corral.store.bundled import library_layers
from corral.store.media import LICENSE, PARAMS, SYSTEM, TEMPLATE
from tests.support import ServerProcess

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
SHORT = {"num_predict": 48, "temperature": 0, "seed": 1}
TIMEOUT = 600  # the tools system prompt is ~400 tokens: a cold prefill on a loaded 2-core machine is slow


def check_call(name: str, arguments: dict[str, Any]) -> None:
    assert name == "get_weather"
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])  # type: ignore[index]


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, trust_env=False) as c:
        yield c


def test_show_matches_the_library_layers(http: httpx.Client) -> None:
    r = http.post("/api/show", json={"model": MODEL})
    assert r.status_code == 200, r.text
    shown = r.json()
    layers = {kind: data.decode("utf-8") for kind, data in library_layers("smollm2-135m")}
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["template"] == layers[TEMPLATE]
    assert shown["system"] == layers[SYSTEM] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert shown["license"] == layers[LICENSE]
    assert shown["parameters"] == format_parameters(json.loads(layers[PARAMS]))
    assert 'stop "<|im_start|>"' in " ".join(shown["parameters"].split())


def test_native_chat_with_tools_answers(http: httpx.Client) -> None:
    r = http.post("/api/chat", json={"model": MODEL, "messages": ASK, "tools": [WEATHER], "stream": False,
                                     "options": SHORT})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True
    msg = r.json()["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)  # `<tool_call>[]` is no call, no text
    for call in msg.get("tool_calls") or []:
        check_call(call["function"]["name"], call["function"]["arguments"])


def test_native_chat_stream_with_tools_and_required_choice(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required", "options": SHORT}
    calls: list[dict[str, Any]] = []
    content = ""
    with http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    for line in lines:
        calls.extend(line["message"].get("tool_calls") or [])
        content += line["message"].get("content", "")
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert content == "" and len(calls) == 1
    check_call(calls[0]["function"]["name"], calls[0]["function"]["arguments"])


def test_openai_client_required_tool_call(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type, list-item]
                                    tool_choice="required", max_tokens=64, temperature=0, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    fn = calls[0].function  # type: ignore[union-attr]
    check_call(fn.name, json.loads(fn.arguments))


def test_openai_client_tools_auto_answers(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type, list-item]
                                    max_tokens=48, temperature=0, seed=1)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls") and msg.role == "assistant"
    for call in msg.tool_calls or []:
        check_call(call.function.name, json.loads(call.function.arguments))  # type: ignore[union-attr]


def test_ollama_client_chat_with_tools(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url, timeout=TIMEOUT)
    assert client.show(MODEL).capabilities == ["completion", "tools"]
    r = client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=SHORT)
    assert r.message.role == "assistant" and r.done
    for call in r.message.tool_calls or []:
        check_call(call.function.name, dict(call.function.arguments))
    streamed = list(client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=SHORT, stream=True))
    assert streamed[-1].done and all(not p.done for p in streamed[:-1])
    for call in (c for p in streamed for c in p.message.tool_calls or []):
        check_call(call.function.name, dict(call.function.arguments))
