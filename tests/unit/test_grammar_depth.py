"""The schema-to-GBNF converter recurses over the user's schema: nesting past `MAX_SCHEMA_DEPTH`
(and patterns with groups nested that deep) is a 400 naming the limit, never a RecursionError."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import BadRequestError
from corral.grammar import MAX_SCHEMA_DEPTH, format_grammar, schema_to_gbnf, tool_call_grammar
from corral.schemas.native import Tool


def items(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


def properties(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels - 1):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def any_of(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "null"}
    for _ in range(levels - 1):
        schema = {"anyOf": [schema, {"type": "boolean"}]}
    return schema


@pytest.mark.parametrize("build", [items, properties, any_of])
def test_schemas_up_to_the_limit_convert(build: Any) -> None:
    grammar = schema_to_gbnf(build(MAX_SCHEMA_DEPTH))
    assert grammar.startswith("root ::= ")


@pytest.mark.parametrize("build", [items, properties, any_of])
@pytest.mark.parametrize("levels", [MAX_SCHEMA_DEPTH + 1, 300, 5000])
def test_deeper_schemas_are_a_400_naming_the_limit(build: Any, levels: int) -> None:
    with pytest.raises(BadRequestError, match=f"nested too deeply \\(limit {MAX_SCHEMA_DEPTH} levels\\)"):
        format_grammar(build(levels))


def test_ref_chains_count_as_nesting() -> None:
    defs = {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(300)}
    defs["d300"] = {"type": "string"}
    with pytest.raises(BadRequestError, match="nested too deeply"):
        schema_to_gbnf({"$ref": "#/$defs/d0", "$defs": defs})


@pytest.mark.parametrize("groups", [MAX_SCHEMA_DEPTH + 1, 300, 5000])
def test_deeply_grouped_patterns_are_a_400_naming_the_limit(groups: int) -> None:
    schema = {"type": "string", "pattern": "(" * groups + "a" + ")" * groups}
    with pytest.raises(BadRequestError, match=f"pattern is nested too deeply \\(limit {MAX_SCHEMA_DEPTH} levels\\)"):
        schema_to_gbnf(schema)
    assert schema_to_gbnf({"type": "string", "pattern": "(" * 10 + "a" + ")" * 10})


def test_a_too_deep_tool_schema_falls_back_to_any_object_like_other_unsupported_schemas() -> None:
    tool = Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": properties(5000)}})
    grammar = tool_call_grammar([tool], "<tool_call>")
    assert '"\\"arguments\\""' in grammar and "object" in grammar


@pytest.mark.parametrize("body", ["[" * 5000 + "]" * 5000,
                                  '{"name": "f", "arguments": "' + "[" * 5000 + "]" * 5000 + '"}'])
def test_model_output_nested_past_the_interpreter_limit_is_content_not_a_crash(body: str) -> None:
    from corral.toolcalls import ToolCallParser

    parser = ToolCallParser("<tool_call>", [Tool.model_validate({"type": "function", "function": {"name": "f"}})])
    content, calls = parser.feed(f"<tool_call>{body}</tool_call>")
    rest, more = parser.finish()
    assert calls == more == [] and body in content + rest
