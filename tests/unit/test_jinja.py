
"""The Jinja path: Hugging Face chat templates in a sandbox, as transformers renders them."""

from __future__ import annotations

import pytest

from corral.schemas.native import Message, Tool, ToolCall, ToolCallFunction, ToolFunction
from corral.template.builtin import get_builtin, reference_jinja
from corral.template.gotemplate import TemplateError
from corral.template.jinja import jinja_messages
from corral.template.prompt import render_chat, render_jinja
from tests.ggufs import smollm2_chat_template

CONVERSATION = [
    Message(role="system", content="You are a helpful assistant."),
    Message(role="user", content="Hello, how are you?"),
    Message(role="assistant", content="I'm doing great. How can I help you today?"),
    Message(role="user", content="I'd like to show off how chat templating works!"),
]


def test_smollm2_template_matches_chatml_go_template() -> None:
    jinja_out = render_jinja(smollm2_chat_template(), CONVERSATION)
    go_out = render_chat(get_builtin("chatml").template, CONVERSATION)
    assert jinja_out == go_out


def test_smollm2_template_adds_default_system_prompt_without_one() -> None:
    out = render_jinja(smollm2_chat_template(), CONVERSATION[1:2])
    assert out.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert out.endswith("<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["chatml", "phi-3", "llama3-instruct"])
def test_reference_jinja_and_go_builtin_agree_without_system(name: str) -> None:
    text = reference_jinja(name)
    assert text is not None
    jinja_out = render_jinja(text, CONVERSATION[1:], bos_token="", eos_token="")
    assert jinja_out == render_chat(get_builtin(name).template, CONVERSATION[1:])


def test_generation_prompt_flag() -> None:
    text = reference_jinja("chatml")
    assert text is not None
    out = render_jinja(text, CONVERSATION[1:2], add_generation_prompt=False)
    assert out == "<|im_start|>user\nHello, how are you?<|im_end|>\n"


def test_tojson_is_transformers_compatible() -> None:
    tool = Tool(function=ToolFunction(name="f", description="café <b>", parameters={"type": "object"}))
    out = render_jinja("{{ tools[0] | tojson }}|{{ {'a': 1} | tojson(indent=2) }}", [], tools=[tool])
    assert out.split("|")[0] == (
        '{"type": "function", "function": {"name": "f", "description": "café <b>", "parameters": {"type": "object"}}}'
    )
    assert out.split("|")[1] == '{\n  "a": 1\n}'


def test_globals_and_flags() -> None:
    template = "{{ bos_token }}{{ enable_thinking }}{{ strftime_now('%Y') | length }}{{ custom }}"
    out = render_jinja(template, [], bos_token="<s>", enable_thinking=False, extra={"custom": "!"})
    assert out == "<s>False4!"


def test_loopcontrols_trim_blocks_and_generation_block() -> None:
    template = (
        "{% for m in messages %}\n{% if loop.index > 2 %}{% break %}{% endif %}\n"
        "{% generation %}{{ m.role }};{% endgeneration %}\n{% endfor %}"
    )
    assert render_jinja(template, CONVERSATION) == "system;user;"


def test_tool_calls_and_tool_results_as_openai_dicts() -> None:
    call = ToolCall(id="c1", function=ToolCallFunction(name="f", arguments={"x": 1}))
    msgs = [
        Message(role="assistant", content="", tool_calls=[call], thinking="hmm"),
        Message(role="tool", content="42", tool_name="f", tool_call_id="c1"),
    ]
    assert jinja_messages(msgs) == [
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "hmm",
            "tool_calls": [
                {"type": "function", "id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}
            ],
        },
        {"role": "tool", "content": "42", "name": "f", "tool_call_id": "c1"},
    ]


@pytest.mark.parametrize(
    "template",
    [
        "{{ raise_exception('Only user and assistant roles are supported!') }}",
        "{% for %}",
        "{{ messages.append(1) }}",
        "{{ 1 / 0 }}",
        "{{ messages[10].content }}",
    ],
)
def test_failures_are_template_errors(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_jinja(template, CONVERSATION)
    assert info.value.status == 400
