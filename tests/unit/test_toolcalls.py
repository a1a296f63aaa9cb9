"""ToolCallParser: tool calls out of streamed text, for any token split; bad JSON stays content."""

from __future__ import annotations

import itertools
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.schemas.native import Tool, ToolCall
from corral.toolcalls import ToolCallParser, balanced_end, closing_tag, list_tag_head, tool_call_id
from tests.support import examples

TOOLS = [
    Tool.model_validate({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}),
    Tool.model_validate({"type": "function", "function": {"name": "get_weather_hourly", "parameters": {}}}),
    Tool.model_validate({"type": "function", "function": {"name": "add", "parameters": {}}}),
]


def run(pieces: list[str], tag: str | None = "<tool_call>", tools: list[Tool] = TOOLS) -> tuple[str, list[ToolCall]]:
    p = ToolCallParser(tag, tools)
    content, calls = [], []
    for piece in pieces:
        c, t = p.feed(piece)
        content.append(c)
        calls.extend(t)
    c, t = p.finish()
    return "".join(content) + c, calls + t


def simple(calls: list[ToolCall]) -> list[tuple[int | None, str, dict[str, object]]]:
    return [(c.function.index, c.function.name, c.function.arguments) for c in calls]


def test_ids_and_closing_tags() -> None:
    assert re.fullmatch(r"call_[a-z0-9]{8}", tool_call_id())
    assert closing_tag("<tool_call>") == "</tool_call>"
    assert closing_tag("[TOOL_CALLS] [") == "]"
    assert closing_tag("{") == ""
    assert closing_tag(None) == ""
    assert closing_tag("<tool_call>[") == "]</tool_call>"
    assert list_tag_head("<tool_call>[") == "<tool_call>" and list_tag_head("<tool_call> [") == "<tool_call>"
    assert list_tag_head("[TOOL_CALLS] [") is None and list_tag_head("<tool_call>") is None


SMOL = "<tool_call>["  # the tag SmolLM2's template implies (Ollama's parseTag on `<tool_call>[\n{{ range ...`)


def test_smollm2_list_of_calls() -> None:
    text = ('<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
            '{"name": "add", "arguments": {"a": 1}}\n]</tool_call>')
    for tag in (SMOL, "<tool_call>"):
        content, calls = run([text], tag=tag)
        assert content == ""
        assert simple(calls) == [(0, "get_weather", {"city": "Paris"}), (1, "add", {"a": 1})]


def test_smollm2_template_rendering_and_spacing_variants() -> None:
    call = '{"name": "add", "arguments": {"a": 1}}'
    for text in (f"<tool_call>[\n{call}{call}\n]</tool_call>",  # the template's own rendering: no comma
                 f"<tool_call>\n[ {call} ,\n {call} ]\n</tool_call>",
                 f"<tool_call>[{call}, {call},]</tool_call>"):
        content, calls = run([text], tag=SMOL)
        assert content == "" and simple(calls) == [(0, "add", {"a": 1}), (1, "add", {"a": 1})], text


def test_smollm2_empty_list_is_no_call_and_bad_items_stay_content() -> None:
    assert run(["<tool_call>[]</tool_call>"], tag=SMOL) == ("", [])
    assert run(["<tool_call>[ ]</tool_call> Nothing to call."], tag=SMOL) == ("Nothing to call.", [])
    for text in ('<tool_call>[{"name": "launch", "arguments": {}}]</tool_call>',
                 "<tool_call>[get_weather(city='Paris')]</tool_call>", "<tool_call>[", "Sure: <tool_call>["):
        assert run([text], tag=SMOL) == (text, []), text
        assert run(list(text), tag=SMOL) == (text, []), text


def test_balanced_end_respects_strings() -> None:
    text = '{"a": "}{", "b": [1, {"c": "\\"}"}]} tail'
    end = balanced_end(text, 0)
    assert end is not None and json.loads(text[:end])["a"] == "}{"
    assert balanced_end('{"a": 1', 0) is None


def test_tagged_call_with_content_before() -> None:
    content, calls = run(['Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                          "</tool_call>"])
    assert content == "Let me check. "
    assert simple(calls) == [(0, "get_weather", {"city": "Paris"})]
    assert calls[0].id is not None and calls[0].id.startswith("call_")


def test_two_calls_are_numbered_and_parameters_accepted() -> None:
    text = ('<tool_call>{"name": "add", "parameters": {"a": 1}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>')
    content, calls = run([text])
    assert content == ""
    assert simple(calls) == [(0, "add", {"a": 1}), (1, "get_weather", {"city": "Oslo"})]
    assert len({c.id for c in calls}) == 2


def test_array_of_calls_and_mistral_style_tag() -> None:
    text = '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2}}, {"name": "add", "arguments": {"a": 3}}]'
    content, calls = run([text], tag="[TOOL_CALLS] [")
    assert content == ""
    assert simple(calls) == [(0, "add", {"a": 2}), (1, "add", {"a": 3})]


def test_longest_name_wins_when_name_is_not_a_key() -> None:
    _, calls = run(['<tool_call>{"function": "get_weather_hourly", "arguments": {}}</tool_call>'])
    assert simple(calls) == [(0, "get_weather_hourly", {})]
    _, calls = run(['<tool_call>{"tool": "call get_weather_hourly now", "arguments": {}}</tool_call>'])
    assert simple(calls) == [(0, "get_weather_hourly", {})]


def test_unknown_tool_name_is_content() -> None:
    text = '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>'
    assert run([text]) == (text, [])


def test_invalid_json_stays_content_without_loss() -> None:
    for text in ['<tool_call>{"name": get_weather}</tool_call> more',
                 '<tool_call>{"name": "get_weather", "arguments": {"city": ',
                 "<tool_call>get_weather(city='Paris')", "Sure: <tool_call>"]:
        assert run([text]) == (text, []), text
        assert run(list(text)) == (text, []), text


def test_no_tag_template_only_parses_leading_json() -> None:
    content, calls = run(['  {"name": "add", "arguments": {"a": 1}}'], tag=None, tools=[])
    assert content == "" and simple(calls) == [(0, "add", {"a": 1})]
    text = 'Here: {"name": "add", "arguments": {"a": 1}}'
    assert run([text], tag="{") == (text, [])


def test_bare_and_fenced_json_when_tools_given() -> None:
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n```'
    content, calls = run([fenced])
    assert content == "" and simple(calls) == [(0, "get_weather", {"city": "Rome"})]
    content, calls = run(['{"name": "add", "arguments": {"b": 2}}'])
    assert content == "" and simple(calls) == [(0, "add", {"b": 2})]
    code = "```python\nprint('hi')\n```"
    assert run([code]) == (code, [])


def test_plain_text_passes_through_and_partial_tag_is_buffered() -> None:
    p = ToolCallParser("<tool_call>", TOOLS)
    assert p.feed("Hello <tool") == ("Hello ", [])
    assert p.feed("box> x") == ("<toolbox> x", [])
    assert p.finish() == ("", [])


def test_json_content_without_tools_is_content() -> None:
    text = '{"answer": 42}'
    assert run([text], tag="<tool_call>") == (text, [])


CALL = '{"name": "get_weather", "arguments": {"city": "New {York}"}}'
STREAMS = st.sampled_from([
    f"Checking.<tool_call>\n{CALL}\n</tool_call>",
    f"<tool_call>{CALL}</tool_call><tool_call>{CALL}</tool_call> done",
    f"```json\n{CALL}\n```",
    f"  {CALL}",
    f"[{CALL}, {CALL}]",
    '<tool_call>{"name": "get_weather", "arguments": {oops}}</tool_call>',
    "no calls here < tool_call > at all",
    "<tool_call",
    f"<tool_call>[\n{CALL},\n{CALL}\n]</tool_call>",
    f"On it. <tool_call>[\n{CALL}{CALL}\n]</tool_call> ok",
    "<tool_call>[]</tool_call>",
    f"<tool_call>\n[{CALL}]\n</tool_call>",
    '<tool_call>[{"name": "get_weather", "arguments": {oops}}]</tool_call>',
    f"<tool_call>[{CALL}, [oops]]</tool_call>",
])


@settings(max_examples=examples(400), deadline=None)
@given(STREAMS, st.lists(st.integers(min_value=0, max_value=200), max_size=10), st.sampled_from(["<tool_call>", SMOL]))
def test_any_split_equals_one_piece(text: str, cuts: list[int], tag: str) -> None:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole_content, whole_calls = run([text], tag=tag)
    content, calls = run(pieces, tag=tag)
    assert content == whole_content
    assert simple(calls) == simple(whole_calls)
    char_content, char_calls = run(list(text), tag=tag)
    assert char_content == whole_content and simple(char_calls) == simple(whole_calls)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["get_weather", "add"]),
                          st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers())),
                min_size=1, max_size=4),
       st.sampled_from([",\n", ", ", "", "\n"]),
       st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_smollm2_lists_parse_whole_and_split(items: list[tuple[str, dict[str, int]]], sep: str,
                                             cuts: list[int]) -> None:
    """Any list of calls in SmolLM2's format is read back as exactly those calls, for any split."""
    body = sep.join(json.dumps({"name": name, "arguments": args}) for name, args in items)
    text = f"<tool_call>[\n{body}\n]</tool_call>"
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]
    want = [(i, name, args) for i, (name, args) in enumerate(items)]
    for parts in ([text], pieces):
        content, calls = run(parts, tag=SMOL)
        assert content == "" and simple(calls) == want
