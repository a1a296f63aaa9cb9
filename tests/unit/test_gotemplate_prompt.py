# ruff: noqa: E501 - template literals read best on one line
"""Prompt rendering from Go templates as Ollama's template.Execute does it."""

from __future__ import annotations

import pytest

from corral.schemas.native import Message, Tool, ToolCall, ToolCallFunction, ToolFunction
from corral.template.builtin import get_builtin
from corral.template.gotemplate import TemplateError
from corral.template.prompt import (
    infer_thinking_tags,
    infer_tool_call_tag,
    render_chat,
    render_generate,
)

S = Message(role="system", content="sys")
U1 = Message(role="user", content="u1")
A1 = Message(role="assistant", content="a1")
U2 = Message(role="user", content="u2")

WEATHER = Tool(
    function=ToolFunction(
        name="get_weather",
        description="Weather <now>",
        parameters={
            "type": "object",
            "required": ["city"],
            "properties": {
                "unit": {"type": "string", "enum": ["c", "f"], "description": "unit"},
                "city": {"type": "string", "description": "the city"},
            },
        },
    )
)


def test_messages_path_sees_system_joined_and_merged_messages() -> None:
    template = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    msgs = [S, Message(role="system", content="sys2"), U1, Message(role="user", content="u1b")]
    assert render_chat(template, msgs) == "sys\n\nsys2|system=sys\n\nsys2;user=u1\n\nu1b;"


def test_tool_messages_are_not_merged() -> None:
    t1 = Message(role="tool", content="r1", tool_name="f")
    t2 = Message(role="tool", content="r2", tool_name="g")
    template = "{{ range .Messages }}{{ .Role }}:{{ .ToolName }}:{{ .Content }};{{ end }}"
    assert render_chat(template, [t1, t2]) == "tool:f:r1;tool:g:r2;"


def test_tools_print_as_go_json() -> None:
    out = render_chat("{{ .Tools }}{{ range .Messages }}{{ end }}", [U1], tools=[WEATHER])
    assert out == (
        '[{"type":"function","function":{"name":"get_weather","description":"Weather \\u003cnow\\u003e",'
        '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string",'
        '"description":"the city"},"unit":{"type":"string","description":"unit","enum":["c","f"]}}}}}]'
    )


def test_no_tools_print_as_null_and_are_false() -> None:
    out = render_chat("{{ .Tools }}{{ if .Tools }}yes{{ end }}{{ range .Messages }}{{ end }}", [U1])
    assert out == "null"


def test_tool_call_fields_and_arguments_json() -> None:
    call = ToolCall(id="c1", function=ToolCallFunction(index=0, name="f", arguments={"b": 1, "a": "<x>"}))
    msg = Message(role="assistant", content="", tool_calls=[call])
    template = "{{ range .Messages }}{{ range .ToolCalls }}{{ .ID }} {{ .Function.Name }} {{ .Function.Arguments }} {{ json .Function.Arguments }}{{ end }}{{ end }}"
    assert render_chat(template, [msg]) == 'c1 f {"a":"\\u003cx\\u003e","b":1} {"a":"\\u003cx\\u003e","b":1}'


def test_property_type_prints_bare() -> None:
    template = "{{ range .Tools }}{{ range $k, $p := .Function.Parameters.Properties }}{{ $k }}:{{ $p.Type }} {{ end }}{{ end }}{{ .Messages }}"
    assert render_chat(template, [], tools=[WEATHER]).startswith("city:string unit:string ")


def test_think_values() -> None:
    template = "{{ if .Think }}T{{ end }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}{{ range .Messages }}{{ end }}"
    assert render_chat(template, [U1], think=True, think_level="high", is_think_set=True) == "T|high|true"
    assert render_chat(template, [U1]) == "||false"


def test_legacy_template_runs_once_per_turn_and_cuts_after_response() -> None:
    template = "{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }} A:{{ .Response }}|"
    assert render_chat(template, [S, U1, A1, U2]) == "S:sys U:u1 A:a1|U:u2 A:"
    assert render_chat(template, [U1]) == "U:u1 A:"


def test_template_without_messages_or_response_gets_response_appended() -> None:
    assert render_chat("{{ .Prompt }}", [U1, A1, U2]) == "u1a1u2"


def test_generate_with_builtin_and_system() -> None:
    out = render_generate(get_builtin("chatml").template, prompt="hi", system="be brief")
    assert (
        out
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_generate_default_template_and_history() -> None:
    assert render_generate("{{ .Prompt }}", prompt="hi", system=None) == "hi"
    out = render_generate(get_builtin("phi-3").template, prompt="q", system=None, history=[U1, A1])
    assert out == "<|user|>\nu1<|end|>\n<|assistant|>\na1<|end|>\n<|user|>\nq<|end|>\n<|assistant|>\n"


def test_generate_with_suffix_uses_prompt_and_suffix_only() -> None:
    template = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    assert render_generate(template, prompt="def f():", suffix="return 1", system="ignored") == (
        "<PRE> def f(): <SUF>return 1 <MID>"
    )


def test_bad_template_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        render_chat("{{ range .Messages }}", [U1])


@pytest.mark.parametrize(
    ("template", "tag"),
    [
        (
            '{{ range .Messages }}{{ if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{"name": "{{ .Function.Name }}"}'
            "{{ end }}</tool_call>{{ end }}{{ end }}",
            "<tool_call>",
        ),
        ("{{ range .Messages }}{{ if .ToolCalls }}[TOOL_CALLS] [{{ range .ToolCalls }}{}{{ end }}]{{ end }}{{ end }}", "[TOOL_CALLS] ["),
        ('{{ range .Messages }}{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": 1}{{ end }}{{ end }}{{ end }}', "{"),
        (get_builtin("chatml").template, None),
    ],
)  # fmt: skip
def test_infer_tool_call_tag(template: str, tag: str | None) -> None:
    assert infer_tool_call_tag(template) == tag


def test_infer_thinking_tags() -> None:
    template = (
        '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ if .Thinking }}<think>{{ .Thinking }}</think>'
        "{{ end }}{{ .Content }}{{ end }}{{ end }}"
    )
    assert infer_thinking_tags(template) == ("<think>", "</think>")
    assert infer_thinking_tags(get_builtin("chatml").template) is None
    assert infer_thinking_tags("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}") is None
