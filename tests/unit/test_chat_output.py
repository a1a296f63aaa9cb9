"""Tool calls, thinking, format grammars and capability errors through /api/chat and /api/generate,
in-process over the scripted engine (what the engine is asked, and what the client gets back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter

from tests.appenv import Env, RecordingEngine, last_params, lines, make_model, run

TOOLS_TEMPLATE = (
    "{{ if .Tools }}TOOLS {{ json .Tools }}\n{{ end }}"
    "{{ range .Messages }}{{ .Role }}: {{ .Content }}"
    "{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}{{ json .Function }}{{ end }}</tool_call>{{ end }}\n"
    "{{ end }}assistant: "
)
THINK_TEMPLATE = (
    "{{ range .Messages }}{{ .Role }}: {{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}\n"
    "{{ end }}{{ if .Think }}assistant: <think>{{ else }}assistant: {{ end }}"
)
WEATHER: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path, engine=RecordingEngine())
    make_model(e.store, tmp_path, "tooly", template=TOOLS_TEMPLATE)
    make_model(e.store, tmp_path, "thinky", template=THINK_TEMPLATE)
    return e


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "weather in Paris?"}], **extra}


def test_tool_calls_parsed_from_split_tokens(env: Env) -> None:
    env.engine.words = ["Sure", " <tool", "_call>", '{"name": "get_', 'weather", "arguments": {"city": ',
                        '"Paris"}}', "</tool_call>"]

    async def main() -> None:
        async with env.client() as c:
            chunks = await lines(c, "/api/chat", chat("tooly", tools=[WEATHER]))
            r = await c.post("/api/chat", json=chat("tooly", tools=[WEATHER], stream=False))
        assert "".join(ch["message"]["content"] for ch in chunks) == "Sure "
        calls = [tc for ch in chunks for tc in ch["message"].get("tool_calls", [])]
        assert len(calls) == 1
        assert calls[0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
        assert calls[0]["id"].startswith("call_") and len(calls[0]["id"]) == 13
        assert chunks[-1]["done_reason"] == "stop"
        body = r.json()
        assert body["message"]["content"] == "Sure "
        assert body["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert body["done_reason"] == "stop"
        assert 'TOOLS [{"type":"function"' in env.engine.runners[0].prompts[0]
        assert last_params(env).grammar is None
    run(main())


def test_bad_tool_json_stays_content(env: Env) -> None:
    env.engine.words = ["<tool_call>", '{"name": get_weather}', " trailing"]

    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/chat", json=chat("tooly", tools=[WEATHER], stream=False))
        msg = r.json()["message"]
        assert msg["content"] == '<tool_call>{"name": get_weather} trailing'
        assert "tool_calls" not in msg
    run(main())


def test_tool_choice_required_named_and_none(env: Env) -> None:
    env.engine.words = ['{"name": "get_weather", "arguments": {"city": "Oslo"}}']
    other = {"type": "function", "function": {"name": "get_time", "parameters": {}}}

    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/chat", json=chat("tooly", tools=[WEATHER, other], tool_choice="required",
                                                    stream=False))
            assert r.json()["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
            grammar = last_params(env).grammar
            assert grammar is not None and '"<tool_call>"' in grammar and "get_time" in grammar
            named = {"type": "function", "function": {"name": "get_weather"}}
            await c.post("/api/chat", json=chat("tooly", tools=[WEATHER, other], tool_choice=named, stream=False))
            grammar = last_params(env).grammar
            assert grammar is not None and "get_weather" in grammar and "get_time" not in grammar
            r = await c.post("/api/chat", json=chat("tooly", tools=[WEATHER], tool_choice="none", stream=False))
            assert "tool_calls" not in r.json()["message"]
            assert r.json()["message"]["content"] == '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
            assert "TOOLS" not in env.engine.runners[0].prompts[-1]
            assert last_params(env).grammar is None
    run(main())


@pytest.mark.parametrize(("body", "message"), [
    ({"tool_choice": "sometimes"}, "invalid tool_choice"),
    ({"tool_choice": "required"}, 'tool_choice "required" needs tools'),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice names an unknown function: nope"),
    ({"format": "yaml"}, 'invalid format: "yaml"; expected "json" or a valid JSON Schema object'),
    ({"format": {"type": "object", "properties": {"a": {"not": {}}}}}, "unsupported JSON schema keyword: not"),
])
def test_bad_requests(env: Env, body: dict[str, Any], message: str) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/chat", json=chat("tooly", **body))
        assert r.status_code == 400
        assert message in r.json()["error"]
    run(main())


def test_capability_errors(env: Env, tmp_path: Path) -> None:
    embed = tmp_path / "embed.gguf"
    w = GGUFWriter(str(embed), "bert")
    w.add_uint32("bert.pooling_type", 1)
    w.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from corral.names import ModelName
    from corral.schemas.native import CreateRequest
    from corral.store.create import create_model

    digest = env.store.blobs.add_file(embed)[0]
    for _ in create_model(env.store, ModelName.parse("embedder"),
                          CreateRequest.model_validate({"model": "embedder", "files": {"e.gguf": digest}})):
        pass

    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/chat", json=chat("tiny", tools=[WEATHER]))
            assert (r.status_code, r.json()["error"]) == (400, "registry.ollama.ai/library/tiny:latest "
                                                                "does not support tools")
            r = await c.post("/api/chat", json=chat("tiny", think=True))
            assert (r.status_code, r.json()["error"]) == (400, '"tiny" does not support thinking')
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "hi", "think": "high"})
            assert (r.status_code, r.json()["error"]) == (400, '"tiny" does not support thinking')
            r = await c.post("/api/generate", json={"model": "embedder", "prompt": "hi"})
            assert (r.status_code, r.json()["error"]) == (400, '"embedder" does not support generate')
            r = await c.post("/api/chat", json=chat("tiny", think=False))
            assert r.status_code == 200
    run(main())


def test_thinking_split_in_chat_and_generate(env: Env) -> None:
    env.engine.words = ["Let me", " think", "</th", "ink>", "\n\n", "It is", " sunny."]

    async def main() -> None:
        async with env.client() as c:
            chunks = await lines(c, "/api/chat", chat("thinky"))
            r = await c.post("/api/generate", json={"model": "thinky", "prompt": "hi", "stream": False})
            off = await c.post("/api/chat", json=chat("thinky", think=False, stream=False))
        assert env.engine.runners[0].prompts[0].endswith("assistant: <think>")  # think defaults to on
        assert "".join(ch["message"].get("thinking", "") for ch in chunks) == "Let me think"
        assert "".join(ch["message"]["content"] for ch in chunks) == "It is sunny."
        body = r.json()
        assert (body["thinking"], body["response"]) == ("Let me think", "It is sunny.")
        assert env.engine.runners[0].prompts[-1].endswith("assistant: ")
        msg = off.json()["message"]
        assert "thinking" not in msg and msg["content"] == "Let me think</think>\n\nIt is sunny."
    run(main())


def test_format_sets_grammar_and_thinking_prefixes_it(env: Env) -> None:
    env.engine.words = ["{}"]
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def main() -> None:
        async with env.client() as c:
            await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "format": "json", "stream": False})
            g = last_params(env).grammar
            assert g is not None and g.startswith("root ::= object")
            await c.post("/api/chat", json=chat("tiny", format=schema, stream=False))
            g = last_params(env).grammar
            assert g is not None and '"\\"n\\""' in g
            await c.post("/api/chat", json=chat("thinky", format=schema, stream=False))
            g = last_params(env).grammar
            assert g is not None and g.startswith("root ::= think-0") and '"\\"n\\""' in g
            await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "format": "", "stream": False})
            assert last_params(env).grammar is None
    run(main())


def test_render_only_shows_tools_and_think(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/api/chat", json=chat("tooly", tools=[WEATHER], _debug_render_only=True))
            assert json.dumps(WEATHER["function"]["name"]) in r.json()["_debug_info"]["rendered_template"]
            r = await c.post("/api/chat", json=chat("thinky", _debug_render_only=True))
            assert r.json()["_debug_info"]["rendered_template"].endswith("assistant: <think>")
    run(main())
