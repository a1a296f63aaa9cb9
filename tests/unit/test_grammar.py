"""JSON Schema → GBNF conversion: every supported feature, and the 400s for the rest.

That the grammars are accepted by llama.cpp and constrain real generations is checked in
tests/integration/test_structured_outputs.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from corral.errors import BadRequestError
from corral.grammar import (
    check_format,
    format_grammar,
    json_grammar,
    regex_to_gbnf,
    schema_to_gbnf,
    tool_call_grammar,
    with_thinking,
)
from corral.schemas.native import Tool


def rules(grammar: str) -> dict[str, str]:
    out = {}
    for line in grammar.strip().splitlines():
        name, _, body = line.partition(" ::= ")
        assert re.fullmatch(r"[a-zA-Z0-9-]+", name), line
        assert name not in out, f"duplicate rule {name}"
        out[name] = body
    return out


def referenced(grammar: str) -> set[str]:
    names = set()
    for body in rules(grammar).values():
        stripped = re.sub(r'"(\\.|[^"\\])*"|\[(\\.|[^\]\\])*\]', " ", body)
        names.update(re.findall(r"[a-zA-Z][a-zA-Z0-9-]*", stripped))
    return names


def well_formed(grammar: str) -> dict[str, str]:
    r = rules(grammar)
    assert "root" in r
    missing = referenced(grammar) - set(r)
    assert not missing, f"undefined rules {missing}"
    return r


def test_format_values_per_spec() -> None:
    assert check_format(None) is None and check_format("") is None
    assert check_format("json") == "json"
    assert check_format({"type": "object"}) == {"type": "object"}
    expected = r'^invalid format: .*; expected "json" or a valid JSON Schema object$'
    for bad in ("yaml", 3, ["json"], True):
        with pytest.raises(BadRequestError, match=expected):
            check_format(bad)
    assert format_grammar(None) is None
    assert format_grammar("json") == json_grammar()


def test_json_grammar_root_is_an_object() -> None:
    r = well_formed(json_grammar())
    assert r["root"] == "object"
    assert r["object"].startswith('"{"')


def test_object_required_and_optional_properties() -> None:
    g = schema_to_gbnf({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                        "required": ["a"]})
    r = well_formed(g)
    assert r["schema-a-kv"] == '"\\"a\\"" ws ":" ws string'
    assert r["schema-b-kv"] == '"\\"b\\"" ws ":" ws integer'
    assert r["schema-from-a"] == "schema-a-kv ws schema-after-b"  # required: always present
    assert r["schema-after-b"] == '("," ws schema-b-kv ws)?'  # optional: may be absent
    assert r["root"] == "schema"


def test_all_optional_object_may_be_empty() -> None:
    r = well_formed(schema_to_gbnf({"type": "object", "properties": {"x": {"type": "boolean"}}}))
    assert r["schema-from-x"] == "(schema-x-kv ws)?"


def test_additional_properties() -> None:
    closed = well_formed(schema_to_gbnf({"type": "object", "properties": {"a": {"type": "null"}},
                                         "additionalProperties": False}))
    assert not any("extra" in k or "rest" in k for k in closed)
    opened = well_formed(schema_to_gbnf({"type": "object", "properties": {"a": {"type": "null"}},
                                         "additionalProperties": {"type": "number"}}))
    assert opened["schema-kv"] == 'string ws ":" ws number'
    assert well_formed(schema_to_gbnf({"type": "object"}))["root"] == "object"


def test_arrays_with_bounds() -> None:
    r = well_formed(schema_to_gbnf({"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4}))
    assert r["schema"] == '"[" ws string ws ("," ws string ws){1,3} "]"'
    r = well_formed(schema_to_gbnf({"type": "array", "items": {"type": "string"}}))
    assert r["schema"] == '"[" ws (string ws ("," ws string ws)*)? "]"'
    r = well_formed(schema_to_gbnf({"type": "array", "items": {"type": "string"}, "minItems": 1}))
    assert r["schema"] == '"[" ws string ws ("," ws string ws)* "]"'
    assert well_formed(schema_to_gbnf({"type": "array", "maxItems": 0}))["schema"] == '"[" ws "]"'


def test_enum_const_and_type_lists() -> None:
    r = well_formed(schema_to_gbnf({"enum": ["red", 1, None, {"k": [True]}]}))
    assert r["schema"] == '"\\"red\\"" | "1" | "null" | "{\\"k\\": [true]}"'
    assert well_formed(schema_to_gbnf({"const": "x"}))["schema"] == '"\\"x\\""'
    r = well_formed(schema_to_gbnf({"type": ["string", "null"]}))
    assert r["schema"] == "string | null"


def test_any_of_one_of_all_of() -> None:
    r = well_formed(schema_to_gbnf({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}))
    assert r["schema"] == "integer | boolean"
    r = well_formed(schema_to_gbnf({"oneOf": [{"type": "string"}, {"type": "null"}]}))
    assert r["schema"] == "string | null"
    assert well_formed(schema_to_gbnf({"allOf": [{"type": "boolean"}]}))["root"] == "boolean"
    with pytest.raises(BadRequestError, match="allOf"):
        schema_to_gbnf({"allOf": [{"type": "boolean"}, {"type": "null"}]})


def test_refs_and_defs() -> None:
    schema = {"type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}, "q": {"$ref": "#/definitions/N"}},
              "required": ["p", "q"],
              "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
              "definitions": {"N": {"type": "null"}}}
    r = well_formed(schema_to_gbnf(schema))
    assert r["schema-p-kv"].endswith("ws point")
    assert r["point-x-kv"] == '"\\"x\\"" ws ":" ws number'
    assert r["schema-q-kv"].endswith("ws null")


def test_ref_cycles_and_bad_refs_are_400s() -> None:
    cyclic = {"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object", "properties": {
        "next": {"$ref": "#/$defs/Node"}}}}}
    with pytest.raises(BadRequestError, match=r"\$ref"):
        schema_to_gbnf(cyclic)
    with pytest.raises(BadRequestError, match=r"\$ref"):
        schema_to_gbnf({"$ref": "#/$defs/Missing"})
    with pytest.raises(BadRequestError, match=r"\$ref"):
        schema_to_gbnf({"$ref": "https://example.com/schema.json"})


def test_unsupported_keywords_are_named() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [("not", {"not": {"type": "string"}}),
                            ("patternProperties", {"type": "object", "patternProperties": {"a": {}}}),
                            ("if", {"if": {}, "then": {}}),
                            ("uniqueItems", {"type": "array", "uniqueItems": True})]
    for keyword, schema in cases:
        with pytest.raises(BadRequestError, match=f"unsupported JSON schema keyword: {keyword}"):
            schema_to_gbnf(schema)
    with pytest.raises(BadRequestError, match="format"):
        schema_to_gbnf({"type": "string", "format": "email"})
    with pytest.raises(BadRequestError, match="type"):
        schema_to_gbnf({"type": "decimal"})


def test_strings_lengths_formats_and_number_bounds() -> None:
    r = well_formed(schema_to_gbnf({"type": "string", "minLength": 2, "maxLength": 5}))
    assert r["schema"] == '"\\"" char{2,5} "\\""'
    r = well_formed(schema_to_gbnf({"type": "string", "format": "date"}))
    assert r["schema"].startswith('"\\"" [0-9]{4} "-"')
    well_formed(schema_to_gbnf({"type": "string", "format": "date-time"}))
    well_formed(schema_to_gbnf({"type": "string", "format": "uuid"}))
    assert well_formed(schema_to_gbnf({"type": "integer", "minimum": 0, "maximum": 9}))["root"] == "uinteger"
    assert well_formed(schema_to_gbnf({"type": "number", "minimum": -1}))["root"] == "number"


def test_patterns_translate() -> None:
    assert regex_to_gbnf(r"^[A-Z]{2}-\d{3,}$") == '[A-Z]{2} "-" [0-9]{3,}'
    assert regex_to_gbnf(r"(?:ab|c\.)+x?") == '("a" "b" | "c" ".")+ "x"?'
    assert regex_to_gbnf(r"[^a-]") == '[^a\\x2D"\\\\\\x00-\\x1F\\x7F]'
    assert regex_to_gbnf(r'a"b') == '"a" "\\\\\\"" "b"'
    g = schema_to_gbnf({"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"})
    assert well_formed(g)["schema"] == '"\\"" ([a-z]+ "@" [a-z]+ "." "c" "o" "m") "\\""'


@pytest.mark.parametrize("pattern", [r"(?=a)b", r"\bword", r"(a", r"[abc", r"a{x}", r"*a", r"a\1"])
def test_untranslatable_patterns_are_400s(pattern: str) -> None:
    with pytest.raises(BadRequestError, match="pattern"):
        schema_to_gbnf({"type": "string", "pattern": pattern})


WEATHER = Tool.model_validate({"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
ODD = Tool.model_validate({"type": "function", "function": {"name": "odd", "parameters": {
    "type": "object", "properties": {"x": {"not": {}}}}}})


def test_tool_call_grammar_in_template_format() -> None:
    r = well_formed(tool_call_grammar([WEATHER, ODD], "<tool_call>", None))
    assert r["root"].startswith('"<tool_call>" ws (') and r["root"].endswith('ws "</tool_call>"')
    calls = [body for name, body in r.items() if name.startswith("t") and "call" in name]
    assert len(calls) == 2
    assert any('"\\"get_weather\\""' in c and "t0-args" in c for c in calls)
    assert any('"\\"odd\\""' in c and c.rstrip().endswith('object ws "}"') for c in calls)  # fallback


def test_tool_call_grammar_for_a_list_tag_closes_list_and_tag() -> None:
    """SmolLM2's template implies the tag `<tool_call>[`: the forced call is `<tool_call>[ {...} ]</tool_call>`."""
    r = well_formed(tool_call_grammar([WEATHER], "<tool_call>[", None))
    assert r["root"].startswith('"<tool_call>[" ws (') and r["root"].endswith('ws "]</tool_call>"')


def test_tool_call_grammar_named_and_untagged() -> None:
    r = well_formed(tool_call_grammar([WEATHER, ODD], None, "get_weather"))
    assert not r["root"].startswith('"<')
    assert "odd" not in "".join(r.values())
    with pytest.raises(BadRequestError, match="unknown function"):
        tool_call_grammar([WEATHER], None, "nope")


def test_thinking_prefix() -> None:
    g = with_thinking(json_grammar(), "<think>", "</think>", opened=True)
    assert g is not None
    r = well_formed(g)
    assert r["root"] == "think-0"
    assert r["answer"] == "ws-think (object)"
    assert r["think-7"].startswith('">" answer')
    g2 = with_thinking(json_grammar(), "<think>", "</think>", opened=False)
    assert g2 is not None and well_formed(g2)["root"].endswith('"<think>" think-0')
    assert with_thinking(json_grammar(), "<t>", "<</t>", opened=True) is None
