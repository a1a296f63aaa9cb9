"""Tool calling with a real SmolLM2: a model created from smollm2:135m with a chatml+tools TEMPLATE,
then `tool_choice` required / named / none through /api/chat on the shared real server."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

pytestmark = pytest.mark.integration
MODEL = "smoltools:latest"
TEMPLATE = """{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}
You may call these tools:
<tools>
{{- range .Tools }}
{{ json .Function }}
{{- end }}
</tools>
To call one, reply with <tool_call>{"name": <name>, "arguments": <arguments object>}</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
{{ end }}</tool_call>{{ end }}<|im_end|>
{{ else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 24}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                         "parameters": {"type": "object", "properties": {
                                             "timezone": {"type": "string", "maxLength": 24}},
                                             "required": ["timezone"]}}}


@pytest.fixture(scope="module")
def tools_model(server: Any) -> str:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        r = c.post("/api/create", json={"model": MODEL, "from": "smollm2:135m", "template": TEMPLATE,
                                        "stream": False})
        assert r.status_code == 200, r.text
        show = c.post("/api/show", json={"model": MODEL}).json()
        assert "tools" in show["capabilities"]
    return MODEL


def ask(http: httpx.Client, model: str, *, constrained: bool = True, **extra: Any) -> dict[str, Any]:
    r = http.post("/api/chat", json={
        "model": model, "stream": False, "options": {"num_predict": 64, "temperature": 0, "seed": 1},
        "messages": [{"role": "user", "content": "What is the weather like in Paris right now?"}],
        "tools": [WEATHER, TIME], **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    if constrained:  # the grammar ends the output well before num_predict
        assert body["done_reason"] == "stop"
    return body


def check_call(call: dict[str, Any], name: str | None = None) -> None:
    fn = call["function"]
    assert call["id"].startswith("call_") and len(call["id"]) == 13
    assert fn["index"] == 0
    tool = {"get_weather": WEATHER, "get_time": TIME}[fn["name"]]
    jsonschema.validate(fn["arguments"], tool["function"]["parameters"])  # type: ignore[index]
    if name is not None:
        assert fn["name"] == name


def test_required_gives_a_valid_tool_call(http: httpx.Client, tools_model: str) -> None:
    msg = ask(http, tools_model, tool_choice="required")["message"]
    assert msg["content"] == ""
    assert len(msg["tool_calls"]) == 1
    check_call(msg["tool_calls"][0])


def test_named_function_is_the_one_called(http: httpx.Client, tools_model: str) -> None:
    msg = ask(http, tools_model, tool_choice={"type": "function", "function": {"name": "get_time"}})["message"]
    assert len(msg["tool_calls"]) == 1
    check_call(msg["tool_calls"][0], "get_time")


def test_none_gives_no_tool_calls_and_hides_tools(http: httpx.Client, tools_model: str) -> None:
    msg = ask(http, tools_model, constrained=False, tool_choice="none",
               options={"num_predict": 24, "temperature": 0})["message"]
    assert "tool_calls" not in msg
    rendered = http.post("/api/chat", json={"model": tools_model, "_debug_render_only": True, "tool_choice": "none",
                                            "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]})
    assert "<tools>" not in rendered.json()["_debug_info"]["rendered_template"]
    rendered = http.post("/api/chat", json={"model": tools_model, "_debug_render_only": True,
                                            "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]})
    assert '"name":"get_weather"' in rendered.json()["_debug_info"]["rendered_template"]


def test_tool_results_round_trip(http: httpx.Client, tools_model: str) -> None:
    first = ask(http, tools_model, tool_choice="required")["message"]
    r = http.post("/api/chat", json={
        "model": tools_model, "stream": False, "options": {"num_predict": 24, "temperature": 0},
        "tools": [WEATHER, TIME], "_debug_render_only": True,
        "messages": [{"role": "user", "content": "Weather in Paris?"}, first,
                     {"role": "tool", "tool_name": "get_weather", "content": "sunny, 21C"}]})
    rendered = r.json()["_debug_info"]["rendered_template"]
    assert "<tool_response>\nsunny, 21C\n</tool_response>" in rendered
    assert f'"name": "{first["tool_calls"][0]["function"]["name"]}"' in rendered
