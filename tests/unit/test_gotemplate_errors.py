"""Parse and execution errors of the Go template interpreter: positions, messages, robustness."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import BadRequestError
from corral.template.gotemplate import GoTemplate, TemplateError
from tests.support import examples


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ .X", "t:1:1: unclosed action"),
        ("ab\ncd {{ end }}", "t:2:7: unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ if .X }}", "unexpected EOF"),
        ("{{ range .X }}a{{ else }}b{{ else }}c{{ end }}", "expected end; found {{else}}"),
        ("{{ foo .X }}", 'function "foo" not defined'),
        ("{{ $x }}", 'undefined variable "$x"'),
        ("{{ $x = 1 }}", 'undefined variable "$x"'),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ }}", "missing value for command"),
        ("{{/* open }}", "unclosed comment"),
        ("{{/* c */ .X }}", "comment ends before closing delimiter"),
        ("{{ .X | 3 }}", "non executable command in pipeline stage 2"),
        ('{{ "unterminated }}', "unterminated quoted string"),
        ("{{ .X ) }}", "unexpected right paren"),
        ("{{ (.X }}", "unclosed left paren"),
        ("{{ # }}", "unrecognized character in action"),
        ("{{ 1a }}", "bad number syntax"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        GoTemplate.parse(text, "t")
    assert message in str(info.value)
    assert str(info.value).startswith("template: t:")


@pytest.mark.parametrize(
    ("text", "data", "message"),
    [
        ("{{ index .L 5 }}", {"L": [1]}, "error calling index: index out of range: 5"),
        ("a\n  {{ .A.B }}", {"A": 1}, 't:2:6: executing "t" at <.A.B>: can\'t evaluate field B in type int'),
        ("{{ len 3 }}", {}, "error calling len: len of type int"),
        ('{{ eq 1 "a" }}', {}, "incompatible types for comparison"),
        ('{{ template "nope" }}', {}, 'no such template "nope"'),
        ("{{ .X 1 }}", {"X": 1}, "can't give argument to non-function X"),
        ("{{ nil }}", {}, "nil is not a command"),
        ('{{ range "s" }}{{ end }}', {}, "range can't iterate over s"),
        ("{{ lt .L 1 }}", {"L": [1]}, "invalid type for comparison"),
    ],
)
def test_execution_errors(text: str, data: Any, message: str) -> None:
    tmpl = GoTemplate.parse(text, "t")
    with pytest.raises(TemplateError) as info:
        tmpl.execute(data)
    assert message in str(info.value)


def test_template_error_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError) as info:
        GoTemplate.parse("{{ end }}")
    assert info.value.status == 400


def test_runaway_recursion_is_an_error() -> None:
    tmpl = GoTemplate.parse('{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}', "t")
    with pytest.raises(TemplateError):
        tmpl.execute({})


_PIECES = st.sampled_from(
    ["{{", "}}", "{{- ", " -}}", ".", ".X", "$", "$x", ":=", "=", "|", "(", ")", " ", "\n", '"s"', "`r`",
     "'c'", "1", "-2", "1.5", "if", "else", "end", "range", "with", "define", "template", "block", "break",
     "continue", "nil", "true", "and", "or", "eq", "len", "index", "slice", "printf", "json", "/*", "*/",
     ",", "text", "{", "}", "-", "%"]
)  # fmt: skip


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_any_text_parses_or_raises_template_error(text: str) -> None:
    try:
        tmpl = GoTemplate.parse(text, "fuzz")
    except TemplateError:
        return
    try:
        tmpl.execute({"X": [1, "a"], "Y": {"k": None}})
    except TemplateError:
        pass
