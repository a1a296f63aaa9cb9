
"""The Go text/template interpreter against outputs Go itself produces for the same input."""

from __future__ import annotations

from typing import Any

import pytest

from corral.template.gotemplate import GoStruct, GoTemplate


def render(text: str, data: Any = None) -> str:
    return GoTemplate.parse(text, "t").execute({} if data is None else data)


@pytest.mark.parametrize(
    ("text", "data", "expected"),
    [
        # trim markers remove all adjacent whitespace, including newlines (Go docs example)
        ("{{23 -}} < {{- 45}}", None, "23<45"),
        ("a \n\t {{- .X -}} \n b", {"X": "x"}, "axb"),
        ("{{-3}}", None, "-3"),
        ("a {{/* comment */}} b", None, "a  b"),
        ("a {{- /* comment */ -}} b", None, "ab"),
        # fields, map keys, missing keys (missingkey=zero on map[string]any prints <no value>)
        ("{{ .A.B }}", {"A": {"B": "deep"}}, "deep"),
        ("{{ .Nope }}", {}, "<no value>"),
        ("{{ .X }}", {"X": None}, "<no value>"),
        ("{{ if .Nope }}a{{ else }}b{{ end }}", {}, "b"),
        ("{{ $.Top }}{{ with .In }}{{ $.Top }}{{ . }}{{ end }}", {"Top": "T", "In": "i"}, "TTi"),
        ("{{ .Name }}", GoStruct("S", {"Name": "s"}), "s"),
        # ranges: lists, maps in sorted key order, ints, else, break/continue
        ("{{ range $k, $v := . }}{{ $k }}={{ $v }},{{ end }}", {"b": 2, "a": 1, "c": 3}, "a=1,b=2,c=3,"),
        ("{{ range $i, $e := .L }}{{ $i }}:{{ $e }} {{ end }}", {"L": ["x", "y"]}, "0:x 1:y "),
        ("{{ range $e := .L }}{{ $e }}{{ end }}", {"L": [1, 2]}, "12"),
        ("{{ range 3 }}{{ . }}{{ end }}", None, "012"),
        ("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}, "empty"),
        ("{{ range .Nope }}x{{ else }}nil{{ end }}", {}, "nil"),
        (
            "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            {"L": [1, 2, 3, 4, 5]},
            "13",
        ),
        # if / else if / with / else with
        ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"B": 1}, "b"),
        ("{{ with .W }}[{{ . }}]{{ else with .V }}v{{ . }}{{ else }}none{{ end }}", {"V": 3}, "v3"),
        ("{{ with .W }}[{{ . }}]{{ else }}none{{ end }}", {"W": ""}, "none"),
        # variables: declaration scope and assignment across range iterations
        ("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}", None, "21"),
        ("{{ $x := 1 }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}", {"L": [5, 6]}, "6"),
        # and/or return an operand and short-circuit
        ('{{ and 1 "" 3 }}|{{ and 1 2 }}|{{ or 0 "x" }}|{{ or "" 0 }}', None, "|2|x|0"),
        ("{{ and false (index .L 5) }} {{ or true (index .L 5) }}", {"L": []}, "false true"),
        ("{{ not 0 }} {{ not .L }}", {"L": [1]}, "true false"),
        # comparisons
        ("{{ eq 3 1 2 3 }} {{ eq 3 1 2 }} {{ ne 1 2 }} {{ eq .Nope 1 }}", {}, "true false true false"),
        ('{{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1.5 2.5 }}', None, "true true true false"),
        # len, index, slice (bytes for strings, as Go)
        ('{{ len .S }} {{ len .L }} {{ len .M }} {{ index .L 1 }} {{ index .M "k" }}', None, None),
        (
            "{{ slice .S 1 3 }} {{ slice .L 1 }} {{ len (slice .L 1) }}",
            {"S": "hello", "L": [1, 2, 3]},
            "el [2 3] 2",
        ),
        ('{{ index .M "nope" }}', {"M": {}}, "<no value>"),
        # printing as fmt's %v
        ("{{ . }}", {"b": [1, "x"], "a": True}, "map[a:true b:[1 x]]"),
        (
            "{{ .F }} {{ .G }} {{ .H }} {{ .I }} {{ .J }}",
            {"F": 1e6, "G": 2.5, "H": 3.0, "I": 1e-5, "J": 123456.0},
            None,
        ),
        (
            '{{ print 1 2 }}|{{ print "a" "b" }}|{{ print 1 "a" 2 }}|{{ println "a" 1 }}',
            None,
            "1 2|ab|1a2|a 1\n",
        ),
        # printf verbs
        (
            '{{ printf "%s|%d|%v|%q|%t|%%" "s" 42 .L "q\\n" true }}',
            {"L": [1, "x"]},
            's|42|[1 x]|"q\\n"|true|%',
        ),
        ('{{ printf "%5d|%-5d|%05d|%x|%X|%x" 42 42 42 255 255 "hi" }}', None, "   42|42   |00042|ff|FF|6869"),
        (
            '{{ printf "%f|%.2f|%6.1f|%e" 3.14159 3.14159 2.5 1234.5678 }}',
            None,
            "3.141590|3.14|   2.5|1.234568e+03",
        ),
        ('{{ printf "%d" "x" }}|{{ printf "%s %s" "a" }}|{{ printf "%s" "a" 1 }}', None, None),
        ('{{ printf "%v" .M }}', {"M": {"b": 1, "a": {"c": None}}}, "map[a:map[c:<nil>] b:1]"),
        ('{{ .A | printf "%s!" }} {{ "abc" | len }}', {"A": "hi"}, "hi! 3"),
        # escaping functions
        ("{{ html .S }}", {"S": "<a href='x'>&\"</a>"}, "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"),
        ("{{ js .S }}", {"S": "a'b\"c\\</script>=\n"}, "a\\'b\\\"c\\\\\\u003C/script\\u003E\\u003D\\u000A"),
        ("{{ urlquery .S }}", {"S": "a b?c=d&é"}, "a+b%3Fc%3Dd%26%C3%A9"),
        # Ollama's json: compact, sorted map keys, HTML-safe, Go float formatting
        ("{{ json .M }}", {"M": {"b": "<&>", "a": [1, 2.5, 3.0, None, True]}}, None),
        # define / template / block
        (
            '{{ define "x" }}X{{ . }}{{ end }}{{ template "x" 5 }}{{ block "y" .A }}B{{ . }}{{ end }}',
            {"A": 1},
            "X5B1",
        ),
    ],
)
def test_matches_go_output(text: str, data: Any, expected: str | None) -> None:
    if expected is None:
        expected = _EXPECTED_BY_TEXT[text]
    if data is None and text in _DATA_BY_TEXT:
        data = _DATA_BY_TEXT[text]
    assert render(text, data) == expected


_DATA_BY_TEXT: dict[str, Any] = {
    '{{ len .S }} {{ len .L }} {{ len .M }} {{ index .L 1 }} {{ index .M "k" }}': {
        "S": "héllo",
        "L": [1, 2, 3],
        "M": {"k": "v"},
    },
}
_EXPECTED_BY_TEXT = {
    '{{ len .S }} {{ len .L }} {{ len .M }} {{ index .L 1 }} {{ index .M "k" }}': "6 3 1 2 v",
    "{{ .F }} {{ .G }} {{ .H }} {{ .I }} {{ .J }}": "1e+06 2.5 3 1e-05 123456",
    '{{ printf "%d" "x" }}|{{ printf "%s %s" "a" }}|{{ printf "%s" "a" 1 }}': (
        "%!d(string=x)|a %!s(MISSING)|a%!(EXTRA int=1)"
    ),
    "{{ json .M }}": '{"a":[1,2.5,3,null,true],"b":"\\u003c\\u0026\\u003e"}',
}


def test_references_and_variables() -> None:
    tmpl = GoTemplate.parse(
        "{{ range .Messages }}{{ .Content }}{{ end }}{{ if $.Tools }}{{ .Function.Name }}{{ end }}"
    )
    assert tmpl.references(".Messages")
    assert tmpl.references("$.Tools")
    assert tmpl.references(".Function.Name")
    assert not tmpl.references(".Suffix")
    assert not tmpl.references(".Response")
    assert {"messages", "content", "tools", "function", "name"} <= tmpl.variables()


def test_with_response_appends_a_response_action() -> None:
    tmpl = GoTemplate.parse("{{ .Prompt }}").with_response()
    assert tmpl.execute({"Prompt": "p", "Response": "r"}) == "pr"
    assert tmpl.references(".Response")


def test_cut_after_response_drops_everything_after_it() -> None:
    tmpl = GoTemplate.parse("<s>{{ .Prompt }} [A] {{ .Response }}</s>{{ if .X }}x{{ end }}")
    assert tmpl.cut_after_response().execute({"Prompt": "p", "Response": "", "X": 1}) == "<s>p [A] "
    # the original is untouched
    assert tmpl.execute({"Prompt": "p", "Response": "r", "X": 1}) == "<s>p [A] r</s>x"


def test_crlf_is_normalised() -> None:
    assert render("a\r\n{{- .X }}", {"X": 1}) == "a1"
