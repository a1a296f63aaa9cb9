"""Lexer for the Go text/template subset used by chat templates.

Owns: splitting template text into text and action tokens the way Go's `text/template/parse`
lexer does, including `{{-`/`-}}` trim markers (which remove all adjacent ASCII whitespace) and
`{{/* comments */}}`. Does not own the grammar (`parser`) or evaluation (`exec`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from corral.template.gotemplate.errors import TemplateError, template_error

__all__ = ["Kind", "Token", "lex"]

LEFT_DELIM = "{{"
RIGHT_DELIM = "}}"
_SPACE = " \t\r\n"
KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with"}
)


class Kind(enum.Enum):
    TEXT = "text"
    LEFT = "{{"
    RIGHT = "}}"
    SPACE = "space"
    IDENT = "identifier"
    KEYWORD = "keyword"
    FIELD = "field"
    DOT = "."
    VARIABLE = "variable"
    STRING = "string"
    CHAR = "char"
    NUMBER = "number"
    BOOL = "bool"
    PIPE = "|"
    LPAREN = "("
    RPAREN = ")"
    DECLARE = ":="
    ASSIGN = "="
    COMMA = ","
    EOF = "EOF"


@dataclass(frozen=True)
class Token:
    kind: Kind
    value: str
    offset: int

    def describe(self) -> str:
        if self.kind is Kind.EOF:
            return "EOF"
        if self.kind in (Kind.KEYWORD, Kind.RIGHT, Kind.LEFT):
            return f"<{self.value}>"
        return f"{self.value!r}".replace("'", '"') if self.kind is not Kind.STRING else self.value


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


class _Lexer:
    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.pos = 0
        self.tokens: list[Token] = []

    def error(self, offset: int, message: str) -> TemplateError:
        return template_error(self.name, self.text, offset, message)

    def emit(self, kind: Kind, start: int, value: str | None = None) -> None:
        self.tokens.append(Token(kind, self.text[start : self.pos] if value is None else value, start))

    def run(self) -> list[Token]:
        text = self.text
        while True:
            i = text.find(LEFT_DELIM, self.pos)
            if i < 0:
                if self.pos < len(text):
                    self.tokens.append(Token(Kind.TEXT, text[self.pos :], self.pos))
                self.tokens.append(Token(Kind.EOF, "", len(text)))
                return self.tokens
            trim = text.startswith("-", i + 2) and i + 3 < len(text) and text[i + 3] in _SPACE
            chunk = text[self.pos : i]
            if trim:
                chunk = chunk.rstrip(_SPACE)
            if chunk:
                self.tokens.append(Token(Kind.TEXT, chunk, self.pos))
            self.pos = i + 2 + (2 if trim else 0)
            if text.startswith("/*", self.pos):
                self.lex_comment(i)
            else:
                self.tokens.append(Token(Kind.LEFT, LEFT_DELIM, i))
                self.lex_action(i)

    def at_right_delim(self) -> tuple[bool, bool]:
        text, pos = self.text, self.pos
        if text.startswith(RIGHT_DELIM, pos):
            return True, False
        if pos < len(text) and text[pos] in _SPACE and text.startswith("-" + RIGHT_DELIM, pos + 1):
            return True, True
        return False, False

    def after_right_delim(self, trim: bool) -> None:
        self.pos += len(RIGHT_DELIM) + (2 if trim else 0)
        if trim:
            while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
                self.pos += 1

    def lex_comment(self, start: int) -> None:
        end = self.text.find("*/", self.pos + 2)
        if end < 0:
            raise self.error(start, "unclosed comment")
        self.pos = end + 2
        delim, trim = self.at_right_delim()
        if not delim:
            raise self.error(start, "comment ends before closing delimiter")
        self.after_right_delim(trim)

    def lex_action(self, start: int) -> None:
        depth = 0
        while True:
            delim, trim = self.at_right_delim()
            if delim and depth > 0:
                raise self.error(start, "unclosed left paren")
            if delim:
                self.tokens.append(Token(Kind.RIGHT, RIGHT_DELIM, self.pos))
                self.after_right_delim(trim)
                return
            if self.pos >= len(self.text):
                raise self.error(start, "unclosed action")
            ch = self.text[self.pos]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise self.error(self.pos, "unexpected right paren")
            self.lex_item(ch)

    def lex_item(self, ch: str) -> None:
        start, text = self.pos, self.text
        simple = {"|": Kind.PIPE, "(": Kind.LPAREN, ")": Kind.RPAREN, ",": Kind.COMMA, "=": Kind.ASSIGN}
        if ch in _SPACE:
            while self.pos < len(text) and text[self.pos] in _SPACE:
                delim, _ = self.at_right_delim()
                if delim:
                    break
                self.pos += 1
            self.emit(Kind.SPACE, start)
        elif ch in simple:
            self.pos += 1
            self.emit(simple[ch], start)
        elif ch == ":":
            if not text.startswith(":=", start):
                raise self.error(start, "expected :=")
            self.pos += 2
            self.emit(Kind.DECLARE, start)
        elif ch == '"':
            self.lex_quote(start)
        elif ch == "`":
            end = text.find("`", start + 1)
            if end < 0:
                raise self.error(start, "unterminated raw quoted string")
            self.pos = end + 1
            self.emit(Kind.STRING, start, text[start + 1 : end])
        elif ch == "'":
            self.lex_char(start)
        elif ch == "$":
            self.pos += 1
            self.scan_alnum()
            self.emit(Kind.VARIABLE, start)
            self.check_terminator()
        elif ch == "." and not (start + 1 < len(text) and text[start + 1].isdigit()):
            self.pos += 1
            if self.pos < len(text) and _is_alnum(text[self.pos]):
                self.scan_alnum()
                self.emit(Kind.FIELD, start)
            else:
                self.emit(Kind.DOT, start)
            self.check_terminator()
        elif ch.isdigit() or ch in "+-.":
            self.lex_number(start)
        elif _is_alnum(ch):
            self.scan_alnum()
            word = text[start : self.pos]
            kind = Kind.KEYWORD if word in KEYWORDS else Kind.IDENT
            kind = Kind.BOOL if word in ("true", "false") else kind
            self.emit(kind, start)
            self.check_terminator()
        else:
            raise self.error(start, f"unrecognized character in action: {_char_repr(ch)}")

    def scan_alnum(self) -> None:
        while self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1

    def check_terminator(self) -> None:
        if self.pos >= len(self.text):
            return
        ch = self.text[self.pos]
        if ch in _SPACE or ch in ".,|:()=" or self.text.startswith(RIGHT_DELIM, self.pos):
            return
        raise self.error(self.pos, f"bad character {_char_repr(ch)}")

    def lex_quote(self, start: int) -> None:
        text, pos = self.text, start + 1
        while True:
            if pos >= len(text) or text[pos] == "\n":
                raise self.error(start, "unterminated quoted string")
            if text[pos] == "\\":
                pos += 2
                continue
            if text[pos] == '"':
                break
            pos += 1
        self.pos = pos + 1
        self.emit(Kind.STRING, start, _unquote(text[start + 1 : pos], lambda m: self.error(start, m)))

    def lex_char(self, start: int) -> None:
        text, pos = self.text, start + 1
        while True:
            if pos >= len(text) or text[pos] == "\n":
                raise self.error(start, "unterminated character constant")
            if text[pos] == "\\":
                pos += 2
                continue
            if text[pos] == "'":
                break
            pos += 1
        self.pos = pos + 1
        value = _unquote(text[start + 1 : pos], lambda m: self.error(start, m))
        if len(value) != 1:
            raise self.error(start, f"malformed character constant: {text[start : self.pos]}")
        self.emit(Kind.CHAR, start, str(ord(value)))

    def lex_number(self, start: int) -> None:
        text = self.text
        pos = start
        if text[pos] in "+-":
            pos += 1
        while pos < len(text) and (_is_alnum(text[pos]) or text[pos] == "."):
            if text[pos] in "eEpP" and pos + 1 < len(text) and text[pos + 1] in "+-":
                pos += 1
            pos += 1
        self.pos = pos
        literal = text[start:pos]
        if parse_number(literal) is None:
            raise self.error(start, f"bad number syntax: {literal!r}".replace("'", '"'))
        self.emit(Kind.NUMBER, start)


def parse_number(literal: str) -> int | float | None:
    """The value of a Go number literal (int when integral without '.', 'e' or 'p')."""
    body = literal.replace("_", "")
    try:
        return int(body, 0)
    except ValueError:
        pass
    try:
        if body.lower().lstrip("+-").startswith("0x"):
            return float.fromhex(body)
        value = float(body)
    except ValueError:
        return None
    if body.lower().lstrip("+-") in ("inf", "infinity", "nan"):
        return None
    return value


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unquote(body: str, fail: object) -> str:
    """Decode Go escape sequences inside a quoted string or character literal."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1] if i + 1 < len(body) else ""
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
        elif esc in "\\'\"":
            out.append(esc)
            i += 2
        elif esc in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i + 2 : i + 2 + width]
            try:
                code = int(digits, 16) if len(digits) == width else -1
            except ValueError:
                code = -1
            if code < 0 or code > 0x10FFFF:
                raise _fail(fail, "invalid syntax")
            out.append(chr(code))
            i += 2 + width
        elif esc and esc in "01234567":
            digits = body[i + 1 : i + 4]
            try:
                out.append(chr(int(digits, 8)))
            except ValueError:
                raise _fail(fail, "invalid syntax") from None
            i += 4
        else:
            raise _fail(fail, "invalid syntax")
    return "".join(out)


def _fail(fail: object, message: str) -> TemplateError:
    assert callable(fail)
    err = fail(message)
    assert isinstance(err, TemplateError)
    return err


def _char_repr(ch: str) -> str:
    return f"U+{ord(ch):04X} '{ch}'"


def lex(text: str, name: str = "") -> list[Token]:
    """All tokens of `text`, ending with an EOF token; raises TemplateError on bad input."""
    return _Lexer(text, name).run()
