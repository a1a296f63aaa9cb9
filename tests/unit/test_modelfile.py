"""corral.modelfile: Ollama's Modelfile grammar, errors, quoting and the /api/show text forms."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import ModelfileError
from corral.modelfile import (
    Command,
    Modelfile,
    _is_print,
    format_parameters,
    go_float,
    go_quote,
    parse,
    quote,
    render_show_modelfile,
    to_create_fields,
    unquote,
)
from corral.schemas.options import ALL_KEYS
from tests.support import examples

INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'


def cmds(text: str, **kw: Any) -> list[tuple[str, str]]:
    return [(c.name, c.args) for c in parse(text, **kw).commands]


def error_of(text: str | bytes) -> ModelfileError:
    with pytest.raises(ModelfileError) as exc_info:
        parse(text)
    return exc_info.value


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\nFROM foo\nBADCOMMAND param1 value1\n", f"(line 3): {INVALID_COMMAND}"),
        ("FROM foo\nFROM2 x\n", f"(line 2): {INVALID_COMMAND}"),
        ("FROM\n", f"(line 2): {INVALID_COMMAND}"),  # the newline is counted before the error
        ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", f"(line 3): {INVALID_ROLE}"),
        ("FROM foo\nMESSAGE User hi\n", f"(line 2): {INVALID_ROLE}"),  # roles are case-sensitive
        ("FROM foo\r\nSYSTEM y\r\nBAD z\r\n", f"(line 3): {INVALID_COMMAND}"),  # CRLF is one line
    ],
)
def test_errors_with_line_numbers(text: str, message: str) -> None:
    err = error_of(text)
    assert str(err) == message
    assert err.status == 400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no FROM line"),
        ("# only a comment\n", "no FROM line"),
        ("PARAMETER temperature 1", "no FROM line"),
        ('FROM foo\nSYSTEM "abc', "unexpected EOF"),
        ('FROM foo\nSYSTEM """This is a multiline system.""\n', "unexpected EOF"),
        ('FROM foo\nSYSTEM "\n', "unexpected EOF"),
        ("FROM", "unexpected EOF"),
        ("FROM foo\nPARAMETER param1\n", "unexpected EOF: param1"),
        ("FROM foo\nPARAMETER top-k 5\n", "unexpected EOF: top"),
        ("FROM foo\nMESSAGE system\n", "unexpected EOF: system"),
        ("FROM foo\nMESSAGE system", "unexpected EOF"),
    ],
)
def test_errors_without_line_numbers(text: str, message: str) -> None:
    err = error_of(text)
    assert str(err) == message
    assert err.line is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("PARAMETER foo 1", "unknown parameter 'foo'"),
        ("PARAMETER top_k abc", "invalid int value [abc]"),
        ("PARAMETER temperature hot", "invalid float value [hot]"),
        ("PARAMETER use_mmap maybe", "invalid bool value [maybe]"),
        ("REQUIRES abc", "requires must be a valid semver (e.g. 0.14.0)"),
        ("REQUIRES 01.2.3", "requires must be a valid semver (e.g. 0.14.0)"),
    ],
)
def test_value_errors_keep_ollama_text_and_record_the_line(line: str, message: str) -> None:
    err = error_of(f"FROM foo\n\n{line}\n")
    assert str(err) == message
    assert err.line == 3


def test_validate_false_is_plain_parsefile() -> None:
    text = "FROM foo\nPARAMETER param1 value1\nPARAMETER mirostat 1\nREQUIRES nope\n"
    assert cmds(text, validate=False) == [
        ("from", "foo"),
        ("param1", "value1"),
        ("mirostat", "1"),
        ("requires", "nope"),
    ]


def test_deprecated_parameters_warn_and_are_dropped() -> None:
    mf = parse("FROM foo\nPARAMETER penalize_newline true\nPARAMETER top_k 5\n")
    assert mf.warnings == ["parameter penalize_newline is deprecated"]
    assert [c.name for c in mf.commands] == ["from", "top_k"]


# --- grammar (cases from Ollama's parser_test.go) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('FROM "FOO  BAR  "', [("from", "FOO  BAR  ")]),
        ('FROM "FOO BAR"\nPARAMETER param1 value1', [("from", "FOO BAR"), ("param1", "value1")]),
        ("FROM     FOOO BAR    ", [("from", "FOOO BAR")]),
        ("FROM /what/is/the path ", [("from", "/what/is/the path")]),
        ("FROM llama3:7b-instruct-q4_K_M", [("from", "llama3:7b-instruct-q4_K_M")]),
        ("PARAMETER param1 value1\nFROM foo", [("param1", "value1"), ("from", "foo")]),
        (
            "PARAMETER what the \nFROM lemons make lemonade ",
            [("what", "the"), ("from", "lemons make lemonade")],
        ),
    ],
)
def test_from_and_trimming(text: str, expected: list[tuple[str, str]]) -> None:
    assert cmds(text, validate=False) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"""\nThis is a\nmultiline system.\n"""', "\nThis is a\nmultiline system.\n"),
        ('"""\nThis is a\nmultiline system."""', "\nThis is a\nmultiline system."),
        ('"""This is a\nmultiline system."""', "This is a\nmultiline system."),
        ('"""This is a multiline system."""', "This is a multiline system."),
        ('"""\nwith "quotes".\n"""', '\nwith "quotes".\n'),
        ('""""""', ""),
        ('""', ""),
        ('"\'"', "'"),
        ('"""\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""', "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'"),
        ('"  spaced  "', "  spaced  "),
        ('"single\nline break"', "single\nline break"),
        ('"a" b"', 'a" b'),  # Ollama only looks at the two ends
        ("'single quotes stay'", "'single quotes stay'"),
        ("   bare with   inner   spaces   ", "bare with   inner   spaces"),
    ],
)
def test_quoting_forms(value: str, expected: str) -> None:
    assert cmds(f"FROM foo\nSYSTEM {value}\n")[1] == ("system", expected)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("stop ### User:", "### User:"),
        ("stop ### User: ", "### User:"),
        ('stop "### User:"', "### User:"),
        ('stop "### User: "', "### User: "),
        ('stop """### User:"""', "### User:"),
        ('stop """### User:\n"""', "### User:\n"),
        ("stop <|endoftext|>", "<|endoftext|>"),
        ("stop </s>", "</s>"),
    ],
)
def test_parameter_values(line: str, expected: str) -> None:
    mf = parse(f"FROM foo\nPARAMETER {line}\n")
    assert mf.commands[1] == Command("stop", expected)
    assert to_create_fields(mf)["parameters"] == {"stop": [expected]}


def test_instructions_are_case_insensitive_and_parameter_names_lowered() -> None:
    text = "from foo\nSyStEm hi\ntemplate t\nParameter Temperature 0.5\nmessage user yo\nLICENSE l\n"
    assert cmds(text) == [
        ("from", "foo"),
        ("system", "hi"),
        ("template", "t"),
        ("temperature", "0.5"),
        ("message", "user: yo"),
        ("license", "l"),
    ]


def test_comments_blank_lines_and_indentation() -> None:
    text = "\n# comment\n  # indented comment\n\tFROM foo\n\n# SYSTEM not this\nSYSTEM\tyes # not a comment\n"
    assert cmds(text) == [("from", "foo"), ("system", "yes # not a comment")]


def test_messages() -> None:
    text = (
        "FROM foo\nMESSAGE system You are a file parser.\nMESSAGE user Hey there!\n"
        'MESSAGE assistant """\nmulti\nline\n"""\n'
    )
    mf = parse(text)
    assert [c.args for c in mf.commands[1:]] == [
        "system: You are a file parser.",
        "user: Hey there!",
        "assistant: \nmulti\nline\n",
    ]
    assert to_create_fields(mf)["messages"] == [
        {"role": "system", "content": "You are a file parser."},
        {"role": "user", "content": "Hey there!"},
        {"role": "assistant", "content": "\nmulti\nline\n"},
    ]


def test_bom_and_utf16() -> None:
    text = "FROM bob\nPARAMETER num_ctx 4096\nSYSTEM You are a utf16 file.\n"
    expected = [("from", "bob"), ("num_ctx", "4096"), ("system", "You are a utf16 file.")]
    assert cmds("\ufeff" + text) == expected
    assert [(c.name, c.args) for c in parse(b"\xef\xbb\xbf" + text.encode()).commands] == expected
    for encoded in (b"\xff\xfe" + text.encode("utf-16-le"), b"\xfe\xff" + text.encode("utf-16-be")):
        assert [(c.name, c.args) for c in parse(encoded).commands] == expected


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse(b"FROM foo\nSYSTEM caf\xe9\n").commands[1].args == "caf\ufffd"


def test_non_printable_runes_are_dropped_but_tabs_kept_in_values() -> None:
    text = "FROM foo\nSYSTEM a\u200bb\u00a0c\x07d\te\n"
    assert cmds(text)[1] == ("system", "abc" + "d\te")


def test_crlf_keeps_carriage_returns_inside_quoted_values() -> None:
    # Ollama writes '\r' into an open quote's buffer; bare lines lose it.
    assert cmds('FROM foo\r\nSYSTEM """a\r\nb"""\r\nLICENSE x\r\n') == [
        ("from", "foo"),
        ("system", "a\r\nb"),
        ("license", "x"),
    ]


# --- create fields --------------------------------------------------------------------------


def test_to_create_fields() -> None:
    text = """FROM ./model.gguf
FROM ./projector.gguf
ADAPTER ./a.gguf
ADAPTER ./b.gguf
TEMPLATE first
TEMPLATE second
SYSTEM s
PARAMETER stop a
PARAMETER temperature 0.1
PARAMETER stop " b "
PARAMETER temperature 0.9
PARAMETER num_ctx 2048
PARAMETER use_mmap TRUE
LICENSE one
LICENSE two
MESSAGE user hi
REQUIRES v0.14.1-rc.2
RENDERER qwen3
PARSER qwen3
DRAFT ./d.gguf
"""
    assert to_create_fields(parse(text)) == {
        "from": "./model.gguf",
        "from_all": ["./model.gguf", "./projector.gguf"],
        "adapters": ["./a.gguf", "./b.gguf"],
        "template": "second",
        "system": "s",
        "license": ["one", "two"],
        "messages": [{"role": "user", "content": "hi"}],
        "parameters": {"stop": ["a", " b "], "temperature": 0.9, "num_ctx": 2048, "use_mmap": True},
        "requires": "0.14.1-rc.2",
        "renderer": "qwen3",
        "parser": "qwen3",
        "draft": "./d.gguf",
    }
    assert to_create_fields(parse("FROM x")) == {"from": "x"}


@pytest.mark.parametrize("version", ["0.14.0", "v0.14.0", "1", "1.2", "1.2.3-rc.1+build.5", "0.0.0-0a"])
def test_requires_accepts_go_semver(version: str) -> None:
    assert to_create_fields(parse(f"FROM x\nREQUIRES {version}"))["requires"] == version.removeprefix("v")


@pytest.mark.parametrize("version", ["abc", "1.2.3.4", "1.2-rc", "1.02.3", "1.2.3-01", "vv1", "1.2.3+"])
def test_requires_rejects_invalid(version: str) -> None:
    assert str(error_of(f"FROM x\nREQUIRES {version}")) == "requires must be a valid semver (e.g. 0.14.0)"


def test_message_without_separator_like_strings_cut() -> None:
    mf = Modelfile([Command("from", "x"), Command("message", "user")])
    assert to_create_fields(mf)["messages"] == [{"role": "user", "content": ""}]


# --- serialization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a\nb", '"a\nb"'),
        (" lead", '" lead"'),
        ("trail ", '"trail "'),
        ('say "hi"\n', '"""say "hi"\n"""'),
        ('"quoted"', '"quoted"'),  # no newline or edge space: left bare
        ("\ttab", "\ttab"),
    ],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote(value) == quoted


def test_unquote() -> None:
    assert unquote('"""x"""') == ("x", True)
    assert unquote('"""x""') == ("", False)
    assert unquote('"x') == ("", False)
    assert unquote("x") == ("x", True)


def test_command_and_modelfile_string() -> None:
    mf = Modelfile(
        [
            Command("from", "llama3.2"),
            Command("system", "be\nbrief"),
            Command("temperature", "0.7"),
            Command("message", "user: hi there"),
            Command("requires", "0.14.0"),
        ]
    )
    assert str(mf) == (
        'FROM llama3.2\nSYSTEM "be\nbrief"\nPARAMETER temperature 0.7\n'
        "MESSAGE user hi there\nREQUIRES 0.14.0\n"
    )


def test_unrepresentable_values_follow_ollama() -> None:
    # A value with a closing triple quote followed by a newline cannot round-trip (Ollama too).
    with pytest.raises(ModelfileError, match=re.escape(f"(line 3): {INVALID_COMMAND}")):
        parse(str(Modelfile([Command("from", "x"), Command("system", 'a"""\nb')])))
    # A bare value that starts with a quote loses it; a lone quote never terminates.
    assert cmds(str(Modelfile([Command("from", "x"), Command("system", '"hi"')])))[1] == ("system", "hi")
    with pytest.raises(ModelfileError, match="unexpected EOF"):
        parse(str(Modelfile([Command("from", "x"), Command("stop", '"')])))
    # Edge tabs on a bare value are trimmed.
    assert cmds(str(Modelfile([Command("from", "x"), Command("system", "\tx\t")])))[1] == ("system", "x")


def test_render_show_modelfile_exact() -> None:
    text = render_show_modelfile(
        short_name="mario:latest",
        from_="/models/blobs/sha256-abc",
        template="{{ .System }}\n{{ .Prompt }}",
        system="You are Mario.",
        parameters={
            "temperature": 1,
            "stop": ["<|eot_id|>", "\n\n"],
            "num_ctx": 1_000_000,
            "use_mmap": False,
        },
        license=["MIT", 'Long "license"\ntext'],
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": " hello"}],
        adapters=["/models/blobs/sha256-lora"],
    )
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM mario:latest\n"
        "\n"
        "FROM /models/blobs/sha256-abc\n"
        "ADAPTER /models/blobs/sha256-lora\n"
        'TEMPLATE "{{ .System }}\n{{ .Prompt }}"\n'
        "SYSTEM You are Mario.\n"
        "PARAMETER num_ctx 1e+06\n"
        "PARAMETER stop <|eot_id|>\n"
        'PARAMETER stop "\n\n"\n'
        "PARAMETER temperature 1\n"
        "PARAMETER use_mmap false\n"
        "LICENSE MIT\n"
        'LICENSE """Long "license"\ntext"""\n'
        "MESSAGE user hi\n"
        'MESSAGE assistant " hello"\n'
    )
    fields = to_create_fields(parse(text))
    assert fields["parameters"] == {
        "num_ctx": 1_000_000,
        "stop": ["<|eot_id|>", "\n\n"],
        "temperature": 1.0,
        "use_mmap": False,
    }


def test_render_show_modelfile_optional_sections() -> None:
    text = render_show_modelfile(
        short_name="m",
        from_="/b/model",
        template=None,
        system="",
        parameters={},
        license=[],
        messages=[],
        adapters=[],
        draft="/b/draft",
        projectors=["/b/proj"],
        renderer="qwen3",
        parser="qwen3",
    )
    assert text.endswith("\nFROM /b/model\nDRAFT /b/draft\nFROM /b/proj\nRENDERER qwen3\nPARSER qwen3\n")


def test_format_parameters() -> None:
    params = {"stop": ["<|im_end|>", 'say "x"\n'], "temperature": 0.7, "num_ctx": 40, "use_mmap": True}
    assert format_parameters(params) == (
        "num_ctx                        40\n"
        'stop                           "<|im_end|>"\n'
        'stop                           "say \\"x\\"\\n"\n'
        "temperature                    0.7\n"
        "use_mmap                       true"
    )
    assert format_parameters({}) == ""


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (40.0, "40"),
        (0.7, "0.7"),
        (-2.5, "-2.5"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (123456789.0, "1.23456789e+08"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (1e100, "1e+100"),
        (0.0, "0"),
    ],
)
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text


def test_go_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("\n\t\r\x00\x7f") == '"\\n\\t\\r\\x00\\x7f"'
    assert go_quote("é✓\u00a0\u200b") == '"é✓\\u00a0\\u200b"'
    assert go_quote("\U0001f600") == '"\U0001f600"'
    assert go_quote("\U000e0001") == '"\\U000e0001"'


# --- properties -----------------------------------------------------------------------------

_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])
_PIECES = st.one_of(st.sampled_from([" ", "\t", "\n", "\r", '"', "#", ":", "'", '"""', "\r\n"]), _CHARS)
_TEXT = st.lists(_PIECES, max_size=30).map("".join)


def representable(value: str) -> bool:
    """Values that survive Ollama's quote() and the parser unchanged."""
    if any(not (_is_print(c) or c in " \t\r\n") for c in value):
        return False
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        if '"' not in value:
            return True
        return re.search(r'"""[ \t\r\n]*[\r\n]', value) is None
    return "\r" not in value and not value.startswith(("\t", '"')) and not value.endswith("\t")


VALUES = _TEXT.filter(representable)
NONEMPTY = VALUES.filter(bool)
ROLES = st.sampled_from(["system", "user", "assistant"])
# one-line values: built without line breaks and stripped rather than filtered (a filter that throws
# most inputs away fails Hypothesis' health check); every such value can still be drawn
_LINE_PIECES = st.one_of(st.sampled_from([" ", "\t", '"', "#", ":", "'", '"""']),
                         st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\r\n"))
FROM_ARGS = st.lists(_LINE_PIECES, min_size=1, max_size=30).map(lambda p: "".join(p).strip(" \t")).filter(
    lambda s: bool(s) and representable(s))


def _param_value(kind: str) -> st.SearchStrategy[Any]:
    if kind == "int":
        return st.integers(-(2**31), 2**31)
    if kind == "float":
        return st.floats(allow_nan=False, allow_infinity=False, width=64)
    if kind == "bool":
        return st.booleans()
    return st.lists(VALUES, min_size=1, max_size=3)


PARAMS = st.dictionaries(st.sampled_from(sorted(ALL_KEYS)), st.just(None), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: _param_value(ALL_KEYS[k]) for k in keys})
)


def _instruction_command() -> st.SearchStrategy[Command]:
    return st.one_of(
        st.builds(Command, st.sampled_from(["template", "system", "license", "adapter"]), VALUES),
        st.builds(lambda r, c: Command("message", f"{r}: {c}"), ROLES, VALUES),
        st.builds(Command, st.sampled_from(["temperature", "top_p"]), st.floats(0, 2).map(repr)),
        st.builds(Command, st.just("stop"), VALUES),
        st.builds(Command, st.just("num_ctx"), st.integers(1, 10**6).map(str)),
    )


@settings(max_examples=examples(200), deadline=None)
@given(
    commands=st.lists(_instruction_command(), max_size=8),
    from_arg=FROM_ARGS,
    upper=st.booleans(),
    comment=st.booleans(),
)
def test_parse_serialize_roundtrip(
    commands: list[Command], from_arg: str, upper: bool, comment: bool
) -> None:
    original = [Command("from", from_arg), *commands]
    lines = [str(c) for c in original]
    if not upper:
        lines = [line.split(" ", 1)[0].lower() + " " + line.split(" ", 1)[1] for line in lines]
    text = ("# generated\n" if comment else "") + "\n".join(lines) + "\n"
    first = parse(text)
    assert first.commands == original
    second = parse(str(first))
    assert second.commands == first.commands


@settings(max_examples=examples(200), deadline=None)
@given(
    template=st.none() | VALUES,
    system=st.none() | NONEMPTY,
    parameters=PARAMS,
    license=st.lists(VALUES, max_size=3),
    messages=st.lists(st.fixed_dictionaries({"role": ROLES, "content": VALUES}), max_size=3),
)
def test_show_modelfile_roundtrip(
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
    license: list[str],
    messages: list[dict[str, str]],
) -> None:
    text = render_show_modelfile(
        short_name="m:latest",
        from_="/blobs/sha256-x",
        template=template,
        system=system,
        parameters=parameters,
        license=license,
        messages=messages,
        adapters=[],
    )
    fields = to_create_fields(parse(text))
    assert fields.get("template") == template
    assert fields.get("system") == system
    assert fields.get("parameters", {}) == parameters
    assert fields.get("license", []) == license
    assert fields.get("messages", []) == messages
