"""GBNF grammars for constrained decoding: `format: "json"`, JSON-schema formats, tool calls.

Owns validating a request's `format` value, converting a JSON Schema to a llama.cpp GBNF grammar
(root rule `root`), the grammar that forces a tool call in a template's format, and the thinking
prefix that leaves a `<think>...</think>` block unconstrained. Does not own sampling (the engine
feeds the string to llama.cpp's grammar sampler) nor parsing the output.

Supported schema: type (and type lists), properties/required/additionalProperties, items,
minItems/maxItems, enum, const, anyOf/oneOf, single-element allOf, $ref into $defs/definitions,
string minLength/maxLength/pattern (a regex subset)/format (date, time, date-time, uuid),
number/integer/boolean/null. Number bounds (minimum, maximum, multipleOf, ...) are accepted but
not enforced, except that `minimum >= 0` forbids a sign. Anything else is a 400 naming it, and
so is a schema (or pattern) nested deeper than `MAX_SCHEMA_DEPTH` levels: the converter recurses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from corral.errors import BadRequestError
from corral.schemas.native import Tool
from corral.toolcalls import closing_tag

MAX_SCHEMA_DEPTH = 64
"""Deepest nesting of subschemas (and of groups in a `pattern`) the converter accepts."""

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "nullable"}
_NUMBER_BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "pattern", "format",
} | _ANNOTATIONS | _NUMBER_BOUNDS

_PRIMITIVES = {
    "ws": '| " " | "\\n" [ \\t]{0,20}',
    "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char* "\\""',
    "integer": '"-"? ([0-9] | [1-9] [0-9]{0,15})',
    "uinteger": '[0-9] | [1-9] [0-9]{0,15}',
    "number": 'integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?',
    "unumber": 'uinteger ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": 'object | array | string | number | boolean | null',
    "object": '"{" ws ( string ":" ws value ws ("," ws string ":" ws value ws)* )? "}"',
    "array": '"[" ws ( value ws ("," ws value ws)* )? "]"',
}
_DEPS = {
    "string": ["char"], "number": ["integer"], "unumber": ["uinteger"],
    "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["ws", "string", "value"], "array": ["ws", "value"],
}
_FORMATS = {
    "date": '[0-9]{4} "-" [0-1] [0-9] "-" [0-3] [0-9]',
    "time": '[0-2] [0-9] ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] [0-2] [0-9] ":" [0-5] [0-9])',
    "uuid": '[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}',
}


def literal(text: str) -> str:
    """A GBNF string literal."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def check_format(value: Any) -> dict[str, Any] | str | None:
    """Validate a request's `format`: "json", a schema object, or unset (None / "")."""
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    raise BadRequestError(f'invalid format: {json.dumps(value)}; expected "json" or a valid JSON Schema object')


class SchemaTooDeepError(BadRequestError):
    """A schema or pattern nested deeper than `MAX_SCHEMA_DEPTH` (a 400 that names the limit)."""

    def __init__(self, what: str = "JSON schema") -> None:
        super().__init__(f"{what} is nested too deeply (limit {MAX_SCHEMA_DEPTH} levels)")


class _Builder:
    """Accumulates named rules; identical bodies share one rule."""

    def __init__(self, root_schema: dict[str, Any]) -> None:
        self.root_schema = root_schema
        self.rules: dict[str, str] = {}
        self.by_body: dict[str, str] = {}
        self.ref_stack: list[str] = []
        self.prefix = ""
        self.depth = 0

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            for dep in _DEPS.get(name, []):
                self.primitive(dep)
        return name

    def add(self, hint: str, body: str) -> str:
        if body in self.by_body:
            return self.by_body[body]
        base = self.prefix + ("".join(c if c.isalnum() else "-" for c in hint).strip("-").lower() or "r")
        name, n = base, 1
        while name in self.rules or name in _PRIMITIVES:
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        self.by_body[body] = name
        return name

    def render(self, root: str) -> str:
        lines = [f"root ::= {root}"] + [f"{k} ::= {v}" for k, v in self.rules.items()]
        return "\n".join(lines) + "\n"

    # -- schema ------------------------------------------------------------------------------
    def visit(self, schema: Any, hint: str) -> str:
        """A GBNF expression (usually a rule name) matching the schema's JSON values."""
        if self.depth >= MAX_SCHEMA_DEPTH:
            raise SchemaTooDeepError()
        self.depth += 1
        try:
            return self._visit(schema, hint)
        finally:
            self.depth -= 1

    def _visit(self, schema: Any, hint: str) -> str:
        if schema is True or schema == {}:
            return self.primitive("value")
        if not isinstance(schema, dict):
            raise BadRequestError(f"unsupported JSON schema: {json.dumps(schema)}")
        unknown = sorted(set(schema) - _KEYWORDS)
        if unknown:
            raise BadRequestError(f"unsupported JSON schema keyword: {unknown[0]}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], hint)
        if "const" in schema:
            return self.add(hint, literal(json.dumps(schema["const"])))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise BadRequestError("unsupported JSON schema: enum must be a non-empty array")
            return self.add(hint, " | ".join(literal(json.dumps(v)) for v in values))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = [self.visit(s, f"{hint}-{i}") for i, s in enumerate(schema[key])]
                return self.add(hint, " | ".join(alts))
        if "allOf" in schema:
            if not isinstance(schema["allOf"], list) or len(schema["allOf"]) != 1:
                raise BadRequestError("unsupported JSON schema keyword: allOf (with more than one schema)")
            return self.visit(schema["allOf"][0], hint)
        types = schema.get("type")
        if isinstance(types, list):
            alts = [self.typed(dict(schema, type=t), t, f"{hint}-{t}") for t in types]
            return self.add(hint, " | ".join(alts))
        if types is None:
            types = self.implied_type(schema)
        return self.typed(schema, types, hint)

    @staticmethod
    def implied_type(schema: dict[str, Any]) -> str | None:
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return None

    def typed(self, schema: dict[str, Any], kind: Any, hint: str) -> str:
        if kind is None:
            return self.primitive("value")
        if kind == "object":
            return self.object(schema, hint)
        if kind == "array":
            return self.array(schema, hint)
        if kind == "string":
            return self.string(schema, hint)
        if kind in ("number", "integer"):
            unsigned = isinstance(schema.get("minimum"), (int, float)) and schema["minimum"] >= 0
            return self.primitive(("u" if unsigned else "") + kind.replace("integer", "integer"))
        if kind in ("boolean", "null"):
            return self.primitive(kind)
        raise BadRequestError(f"unsupported JSON schema type: {json.dumps(kind)}")

    def ref(self, ref: Any, hint: str) -> str:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise BadRequestError(f"unsupported JSON schema $ref: {ref!r} (only local #/$defs/... refs)")
        if ref in self.ref_stack:
            raise BadRequestError(f"unsupported JSON schema: recursive $ref {ref}")
        target: Any = self.root_schema
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise BadRequestError(f"unresolvable JSON schema $ref: {ref}")
            target = target[part]
        self.ref_stack.append(ref)
        try:
            return self.visit(target, ref.rsplit("/", 1)[-1])
        finally:
            self.ref_stack.pop()

    def object(self, schema: dict[str, Any], hint: str) -> str:
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return self.primitive("object")
        if not isinstance(props or {}, dict):
            raise BadRequestError("unsupported JSON schema: properties must be an object")
        required = set(schema.get("required") or [])
        ws = self.primitive("ws")
        string = self.primitive("string")
        items = [(k, f'{literal(json.dumps(k))} ws ":" ws {self.visit(v, f"{hint}-{k}")}', k in required)
                 for k, v in (props or {}).items()]
        tail_first, tail_after = "", ""
        if extra not in (None, False):
            value = self.visit({} if extra is True else extra, f"{hint}-extra")
            kv = self.add(f"{hint}-kv", f'{string} ws ":" ws {value}')
            tail_first = self.add(f"{hint}-rest", f'({kv} ws ("," ws {kv} ws)*)?')
            tail_after = self.add(f"{hint}-more", f'("," ws {kv} ws)*')
        first, after = tail_first, tail_after
        for key, kv, req in reversed(items):
            kv_rule = self.add(f"{hint}-{key}-kv", kv)
            new_after = f'"," ws {kv_rule} ws {after}'.strip() if req else f'("," ws {kv_rule} ws)? {after}'.strip()
            new_first = f"{kv_rule} ws {after}".strip()
            if not req:
                new_first = f"{new_first} | {first}" if first else f"({new_first})?"
            first = self.add(f"{hint}-from-{key}", new_first)
            after = self.add(f"{hint}-after-{key}", new_after)
        body = f'"{{" {ws} {first} "}}"' if first else f'"{{" {ws} "}}"'
        return self.add(hint, body)

    def array(self, schema: dict[str, Any], hint: str) -> str:
        item_schema = schema.get("items", {})
        if isinstance(item_schema, list):
            raise BadRequestError("unsupported JSON schema keyword: items (as an array)")
        item = self.visit(item_schema, f"{hint}-item")
        ws = self.primitive("ws")
        lo, hi = _bounds(schema, "minItems", "maxItems")
        if hi == 0:
            return self.add(hint, f'"[" {ws} "]"')
        more = _repeat(f'("," {ws} {item} {ws})', max(lo - 1, 0), None if hi is None else hi - 1)
        seq = f"{item} {ws} {more}".strip()
        return self.add(hint, f'"[" {ws} {seq if lo > 0 else "(" + seq + ")?"} "]"')

    def string(self, schema: dict[str, Any], hint: str) -> str:
        if "pattern" in schema:
            return self.add(hint, f'"\\"" ({regex_to_gbnf(schema["pattern"])}) "\\""')
        fmt = schema.get("format")
        if fmt is not None:
            if fmt == "date-time":
                return self.add(hint, f'"\\"" {_FORMATS["date"]} "T" {_FORMATS["time"]} "\\""')
            if fmt not in _FORMATS:
                raise BadRequestError(f"unsupported JSON schema keyword: format {json.dumps(fmt)}")
            return self.add(hint, f'"\\"" {_FORMATS[fmt]} "\\""')
        lo, hi = _bounds(schema, "minLength", "maxLength")
        if lo == 0 and hi is None:
            return self.primitive("string")
        char = self.primitive("char")
        return self.add(hint, f'"\\"" {_repeat(char, lo, hi)} "\\""')


_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}
_UNSAFE = '"\\\\\\x00-\\x1F\\x7F'  # never a raw JSON string character


class _Regex:
    """Translate a regex subset (literals, ., classes, \\d \\w \\s, groups, |, * + ? {m,n}, ^ $)."""

    def __init__(self, pattern: str) -> None:
        self.src = pattern
        self.pos = 0
        self.depth = 0

    def fail(self, what: str) -> BadRequestError:
        return BadRequestError(f"unsupported JSON schema pattern {self.src!r}: {what}")

    def parse(self) -> str:
        src = self.src
        if src.startswith("^"):
            self.pos = 1
        out = self.alternation()
        if self.pos < len(src) and src[self.pos:] != "$":
            raise self.fail(f"unexpected {src[self.pos]!r}")
        return out

    def alternation(self) -> str:
        alts = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            alts.append(self.sequence())
        return " | ".join(a or '""' for a in alts)

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def sequence(self) -> str:
        items: list[str] = []
        while self.peek() not in ("", "|", ")") and self.src[self.pos:] != "$":
            items.append(self.quantified(self.atom()))
        return " ".join(items)

    def atom(self) -> str:
        c = self.peek()
        self.pos += 1
        if c == "(":
            if self.depth >= MAX_SCHEMA_DEPTH:
                raise SchemaTooDeepError("JSON schema pattern")
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise self.fail("lookaround and named groups")
            self.depth += 1
            inner = self.alternation()
            self.depth -= 1
            if self.peek() != ")":
                raise self.fail("unbalanced parenthesis")
            self.pos += 1
            return f"({inner})"
        if c == "[":
            return self.char_class()
        if c == ".":
            return f"[^{_UNSAFE}]"
        if c == "\\":
            e = self.peek()
            self.pos += 1
            if e in _CLASS_ESCAPES:
                return f"[{_CLASS_ESCAPES[e]}]"
            if e.isalnum():
                raise self.fail(f"escape \\{e}")
            return self.char(e)
        if c in "*+?{":
            raise self.fail(f"nothing to repeat at {c!r}")
        if c in "^$":
            raise self.fail(f"anchor {c!r} inside the pattern")
        return self.char(c)

    def char(self, c: str) -> str:
        if c == '"':
            return literal('\\"')
        if c == "\\":
            return literal("\\\\")
        if ord(c) < 0x20:
            raise self.fail("control characters")
        return literal(c)

    def char_class(self) -> str:
        negate = self.peek() == "^"
        self.pos += negate
        parts: list[str] = []
        first = True
        while self.peek() and (self.peek() != "]" or first):
            first = False
            c = self.peek()
            self.pos += 1
            if c == "\\":
                e = self.peek()
                self.pos += 1
                if e in _CLASS_ESCAPES:
                    parts.append(_CLASS_ESCAPES[e])
                    continue
                if e.isalnum():
                    raise self.fail(f"escape \\{e}")
                c = e
            if c in '"\\' or ord(c) < 0x20:
                continue
            if c == "-" and parts and self.peek() not in ("]", ""):
                parts.append("-")
                continue
            parts.append(_cls(c))
        if self.peek() != "]":
            raise self.fail("unterminated character class")
        self.pos += 1
        body = "".join(parts)
        if negate:
            return f"[^{body}{_UNSAFE}]"
        if not body:
            raise self.fail("empty character class")
        return f"[{body}]"

    def quantified(self, atom: str) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            if self.peek() in ("?", "+"):
                self.pos += 1  # lazy/possessive: same language
            return f"{atom}{c}"
        if c == "{":
            end = self.src.find("}", self.pos)
            spec = self.src[self.pos + 1:end] if end > 0 else ""
            lo, _, hi = spec.partition(",")
            if not lo.strip().isdigit() or (hi.strip() and not hi.strip().isdigit()):
                raise self.fail(f"quantifier {{{spec}}}")
            self.pos = end + 1
            if "," not in spec:
                return f"{atom}{{{int(lo)}}}"
            return f"{atom}{{{int(lo)},{int(hi) if hi.strip() else ''}}}"
        return atom


def regex_to_gbnf(pattern: str) -> str:
    """A GBNF expression for the JSON string contents matching `pattern` (anchored at both ends).

    A JSON Schema pattern is unanchored; corral treats it as anchored (the usual intent).
    """
    if not isinstance(pattern, str):
        raise BadRequestError("unsupported JSON schema: pattern must be a string")
    return _Regex(pattern).parse() or '""'


def _bounds(schema: dict[str, Any], lo_key: str, hi_key: str) -> tuple[int, int | None]:
    lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
    if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
        raise BadRequestError(f"unsupported JSON schema: invalid {lo_key}/{hi_key}")
    return lo, hi


def _repeat(expr: str, lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{expr}{{{lo},}}" if lo else f"{expr}*"
    if hi == 0:
        return ""
    return f"{expr}{{{lo},{hi}}}"


def json_grammar() -> str:
    """`format: "json"`: any JSON object (as llama.cpp's json.gbnf, whose root is an object)."""
    b = _Builder({})
    return b.render(f'{b.primitive("object")}')


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """A GBNF grammar (root `root`) whose sentences are the JSON documents valid for `schema`."""
    b = _Builder(schema)
    return b.render(b.visit(schema, "schema"))


def format_grammar(value: Any) -> str | None:
    """The grammar for a request's `format` (validated), or None when unset."""
    fmt = check_format(value)
    if fmt is None:
        return None
    return json_grammar() if isinstance(fmt, str) else schema_to_gbnf(fmt)


def tool_call_grammar(tools: Sequence[Tool], tag: str | None, name: str | None = None) -> str:
    """Output must be one tool call in the template's format: tag, `{"name", "arguments"}`, close.

    `name` restricts the call to one function. A tool whose parameters use unsupported schema
    features gets arguments constrained only to a JSON object.
    """
    chosen = [t for t in tools if name is None or t.function.name == name]
    if not chosen:
        raise BadRequestError(f"tool_choice names an unknown function: {name}")
    b = _Builder({})
    ws = b.primitive("ws")
    alts = []
    for i, tool in enumerate(chosen):
        params = tool.function.parameters or {}
        b.root_schema, b.prefix = params, f"t{i}-"
        saved = dict(b.rules), dict(b.by_body)
        try:
            args = b.visit(params, "args") if params else b.primitive("object")
        except BadRequestError:
            b.rules, b.by_body = saved
            args = b.primitive("object")
        call = (f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(tool.function.name))} {ws} "," {ws} '
                f'"\\"arguments\\"" {ws} ":" {ws} {args} {ws} "}}"')
        alts.append(b.add("call", call))
    open_tag = tag if tag and tag != "{" else ""
    close = closing_tag(tag)
    parts = [f"{literal(open_tag)} {ws}" if open_tag else "", f"({' | '.join(alts)})",
             f"{ws} {literal(close)}" if close else ""]
    return b.render(" ".join(p for p in parts if p))


def with_thinking(grammar: str, open_tag: str, close_tag: str, *, opened: bool) -> str | None:
    """Prefix `grammar` so that a free `open_tag ... close_tag` block may come first.

    Returns None when the closing tag's first character recurs in it (the simple automaton below
    would be wrong); callers then decode unconstrained while thinking is on.
    """
    if not close_tag or close_tag[0] in close_tag[1:]:
        return None
    first = close_tag[0]
    lines = grammar.rstrip("\n").split("\n")
    root = lines[0].removeprefix("root ::= ")
    rules = [f"think-0 ::= [^{_cls(first)}]* {literal(first)} think-1"]
    for k in range(1, len(close_tag)):
        nxt = f"think-{k + 1}" if k + 1 < len(close_tag) else "answer"
        rules.append(f"think-{k} ::= {literal(close_tag[k])} {nxt} | {literal(first)} think-1 | "
                     f"[^{_cls(first)}{_cls(close_tag[k])}] think-0")
    rules.append(f"answer ::= ws-think ({root})")
    rules.append('ws-think ::= [ \\t\\n]{0,4}')
    opening = "" if opened else f"[ \\t\\n]{{0,4}} {literal(open_tag)} "
    head = f"root ::= {opening}think-0"
    return "\n".join([head, *rules, *lines[1:]]) + "\n"


def _cls(c: str) -> str:
    """A character escaped for use inside a GBNF character class."""
    if c in "]\\[":
        return "\\" + c
    if c in "^-":
        return f"\\x{ord(c):02X}"
    if c == "\n":
        return "\\n"
    return c
