"""Go value semantics for Python data: truth, field access, `%v` printing and `json.Marshal`.

Owns: how template data (dicts as Go maps, lists as slices, str/int/float/bool, None as a nil
interface, dataclasses and `GoStruct` as structs) behaves like Go values: truthiness, field and
key lookup with `missingkey=zero`, printing as `fmt.Sprint` does (`<no value>`, `map[k:v]`,
`[a b]`, Go float formatting) and JSON encoding as `encoding/json` does (sorted keys, HTML-safe
escapes). Objects may define `go_string()` (Go's `String()` method) and `go_json()` (the value
`json.Marshal` sees). Does not own template functions or execution.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from typing import Any

__all__ = [
    "MISSING",
    "GoStruct",
    "OrderedJSON",
    "ValueError_",
    "format_float",
    "get_field",
    "go_json",
    "is_true",
    "sprint",
    "type_name",
]


class _Missing:
    """An invalid reflect.Value: a missing map key or a nil interface. Prints `<no value>`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = _Missing()


class ValueError_(Exception):
    """An evaluation error without position; the executor adds the position."""


class OrderedJSON(dict[str, Any]):
    """A JSON object encoded in insertion order (a Go struct's fields), not sorted like a map."""


class GoStruct:
    """A Go struct value: named fields in declaration order, with optional String()/JSON."""

    def __init__(
        self,
        type_name: str,
        fields: dict[str, Any],
        *,
        string: str | None = None,
        json_value: Any = MISSING,
    ) -> None:
        self.type_name = type_name
        self.fields = fields
        self._string = string
        self._json = json_value

    def go_string(self) -> str:
        if self._string is not None:
            return self._string
        return "{" + " ".join(sprint_value(v) for v in self.fields.values()) + "}"

    def go_json(self) -> Any:
        return self.fields if self._json is MISSING else self._json

    def __repr__(self) -> str:
        return f"GoStruct({self.type_name}, {self.fields!r})"


def type_name(value: Any) -> str:
    """Go-ish name of a value's type, for error messages."""
    if value is MISSING or value is None:
        return "interface {}"
    if isinstance(value, GoStruct):
        return value.type_name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def is_true(value: Any) -> bool:
    """Go's template truth: false, 0, nil, and empty strings, slices and maps are false."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def get_field(value: Any, name: str) -> Any:
    """`.name` on `value`: a map key (missing → MISSING) or a struct field (missing → error)."""
    if value is MISSING or value is None:
        return MISSING
    if isinstance(value, dict):
        return value.get(name, MISSING)
    if isinstance(value, GoStruct):
        if name in value.fields:
            return value.fields[name]
        raise ValueError_(f"can't evaluate field {name} in type {value.type_name}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if any(f.name == name for f in dataclasses.fields(value)):
            return getattr(value, name)
        raise ValueError_(f"can't evaluate field {name} in type {type(value).__name__}")
    raise ValueError_(f"can't evaluate field {name} in type {type_name(value)}")


def format_float(value: float, fmt: str = "g", prec: int = -1) -> str:
    """Go's strconv.FormatFloat(value, fmt, prec, 64) for 'g' (shortest) and 'e'/'f'."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if fmt == "f":
        return f"{value:.{prec}f}" if prec >= 0 else _shortest_fixed(value)
    if fmt == "e":
        return _go_exponent(f"{value:.{prec}e}" if prec >= 0 else _shortest_exp(value))
    # shortest 'g' (fmt's %v): %e when the decimal exponent is < -4 or >= 6
    _, exp = _shortest_digits(value)
    eprec = 6 if prec < 0 else prec
    if exp < -4 or exp >= eprec:
        return _go_exponent(_shortest_exp(value))
    return _shortest_fixed(value)


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |value| and its decimal exponent (d.ddd × 10^exp)."""
    if value == 0:
        return "0", 0
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    exp = len(digit_tuple) + exponent - 1
    return digits, exp


def _sign(value: float) -> str:
    return "-" if math.copysign(1.0, value) < 0 else ""


def _shortest_exp(value: float) -> str:
    digits, exp = _shortest_digits(value)
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{_sign(value)}{mant}e{exp:+03d}"


def _shortest_fixed(value: float) -> str:
    digits, exp = _shortest_digits(value)
    if exp >= 0:
        whole = digits.ljust(exp + 1, "0")
        body = whole[: exp + 1] + ("." + whole[exp + 1 :] if len(whole) > exp + 1 else "")
    else:
        body = "0." + "0" * (-exp - 1) + digits
    return _sign(value) + body


def _go_exponent(text: str) -> str:
    mant, _, exp = text.partition("e")
    sign = exp[0] if exp and exp[0] in "+-" else "+"
    number = exp.lstrip("+-").lstrip("0") or "0"
    return f"{mant}e{sign}{number.rjust(2, '0')}"


def sprint_value(value: Any) -> str:
    """One value as fmt's %v prints it."""
    if value is MISSING or value is None:
        return "<nil>" if value is None else "<no value>"
    if hasattr(value, "go_string"):
        return str(value.go_string())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(sprint_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
        return "map[" + " ".join(f"{sprint_value(k)}:{sprint_value(v)}" for k, v in items) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        values = (getattr(value, f.name) for f in dataclasses.fields(value))
        return "{" + " ".join(sprint_value(v) for v in values) + "}"
    return str(value)


def _sort_key(key: Any) -> tuple[int, Any]:
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return (0, key)
    return (1, str(key))


def sprint(value: Any) -> str:
    """A pipeline result as the template prints it (nil interface → `<no value>`)."""
    if value is None:
        return "<no value>"
    return sprint_value(value)


# -- encoding/json ------------------------------------------------------------------------------


def go_json(value: Any) -> str:
    """`json.Marshal(value)` as Go prints it: compact, sorted map keys, HTML-safe escapes."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def _encode(value: Any, out: list[str]) -> None:
    if hasattr(value, "go_json"):
        _encode(value.go_json(), out)
    elif value is None or value is MISSING:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_json_float(value))
    elif isinstance(value, str):
        out.append(json_quote(value))
    elif isinstance(value, dict):
        out.append("{")
        keys = list(value) if isinstance(value, OrderedJSON) else sorted(value, key=str)
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(json_quote(str(key)))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _encode({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, out)
    else:
        raise ValueError_(f"json: unsupported type: {type(value).__name__}")


def _json_float(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise ValueError_(f"json: unsupported value: {format_float(value)}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = _go_exponent(_shortest_exp(value))
        mant, _, exp = text.partition("e")
        if exp.startswith("-0"):
            exp = "-" + exp[2:]
        elif exp.startswith("+0"):
            exp = "+" + exp[2:]
        return f"{mant}e{exp}"
    return _shortest_fixed(value)


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_ESCAPES.update({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})
_JSON_ESCAPES.update({"\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_quote(text: str) -> str:
    """A Go JSON string literal (HTMLEscape on, non-ASCII kept)."""
    parts = ['"']
    for ch in text:
        if ch in _JSON_ESCAPES:
            parts.append(_JSON_ESCAPES[ch])
        elif ch < " ":
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)
