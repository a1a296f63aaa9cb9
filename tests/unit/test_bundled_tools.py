"""A model imported with smollm2:135m's library layers, in-process over the scripted engine: /api/show
reports `tools`, tool requests are accepted (they were a 400 with the GGUF's plain ChatML), the
SmolLM2 output format comes back as tool calls, and a forced call is constrained to that format.
The same on the real model: tests/integration/test_bundled_tools.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from corral.modelfile import format_parameters
from corral.store import bundled, media
from corral.store.bundled import BundledModel, library_layers
from tests.appenv import Env, RecordingEngine, last_params, lines, make_chunks, run

MODEL = "smollm2:135m"
WEATHER: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
# What SmolLM2 writes for a call (its template's own format), cut as a tokenizer might cut it.
SMOL_OUTPUT = ["<tool", "_call", ">[", "\n{\"name\": \"get_", 'weather", "arguments": {"city": "Pa', 'ris"}}',
               "\n]</", "tool_call>"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    (tmp_path / "src").mkdir()
    chunks = make_chunks(tmp_path / "src")
    fake = BundledModel(name=MODEL, packages=("json",), family_template=None, _files=lambda: chunks,
                        library="smollm2-135m")
    monkeypatch.setattr(bundled, "_BUNDLED", (fake,))
    e = Env(tmp_path, engine=RecordingEngine(words=list(SMOL_OUTPUT)))

    async def pull() -> None:
        async with e.client() as c:
            r = await c.post("/api/pull", json={"model": MODEL, "stream": False})
            assert r.status_code == 200 and r.json()["status"] == "success", r.text

    run(pull())
    return e


def test_show_has_tools_and_the_library_layers(env: Env) -> None:
    layers = {kind: data.decode("utf-8") for kind, data in library_layers("smollm2-135m")}

    async def main() -> None:
        async with env.client() as c:
            shown = (await c.post("/api/show", json={"model": MODEL})).json()
        assert shown["capabilities"] == ["completion", "tools"]
        assert shown["template"] == layers[media.TEMPLATE]
        assert shown["system"] == layers[media.SYSTEM]
        assert shown["license"] == layers[media.LICENSE]
        assert shown["parameters"] == format_parameters(json.loads(layers[media.PARAMS]))
    run(main())


def test_chat_with_tools_parses_smollm2_calls_streamed_and_not(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            chunks = await lines(c, "/api/chat", {"model": MODEL, "messages": ASK, "tools": [WEATHER]})
            whole = await c.post("/api/chat", json={"model": MODEL, "messages": ASK, "tools": [WEATHER],
                                                    "stream": False})
        streamed = [call for ch in chunks for call in ch["message"].get("tool_calls") or []]
        assert "".join(ch["message"]["content"] for ch in chunks) == ""
        assert whole.status_code == 200, whole.text
        message = whole.json()["message"]
        assert message["content"] == ""
        for calls in (streamed, message["tool_calls"]):
            assert [(t["function"]["name"], t["function"]["arguments"]) for t in calls] == [
                ("get_weather", {"city": "Paris"})]
        prompt = last_params(env).prompt
        assert prompt.startswith("<|im_start|>system\nYou are an expert in composing functions.")
        assert '<tools>[{"type":"function","function":{"name":"get_weather"' in prompt
        assert prompt.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    run(main())


def test_required_tool_choice_grammar_is_the_template_format(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/chat", json={"model": MODEL, "messages": ASK, "tools": [WEATHER],
                                                "tool_choice": "required", "stream": False})
        assert r.status_code == 200, r.text
        grammar = last_params(env).grammar
        assert grammar is not None
        root = grammar.splitlines()[0]
        assert root.startswith('root ::= "<tool_call>[" ws (') and root.endswith('ws "]</tool_call>"')
        assert [t["function"]["name"] for t in r.json()["message"]["tool_calls"]] == ["get_weather"]
    run(main())


def test_openai_client_gets_a_parsed_tool_call(env: Env) -> None:
    async def main() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://127.0.0.1:11434/v1")
        async with openai.AsyncOpenAI(base_url="http://127.0.0.1:11434/v1", api_key="x", http_client=http,
                                      max_retries=0) as client:
            r = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type, list-item]
                                                     tool_choice="required")
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    run(main())
