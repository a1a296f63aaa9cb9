"""JSON bytes exactly as Go's `json.NewEncoder(w).Encode(v)` writes them.

Owns the encoding rules that make our manifests, configs and params blobs byte-identical to
Ollama's: compact separators, a trailing newline, `<`, `>`, `&`, U+2028 and U+2029 escaped as
`\\u003c`-style sequences, non-ASCII text kept as UTF-8, and Go's float formatting (`1` for 1.0,
positional notation between 1e-6 and 1e21). Key order is the caller's: pass struct fields in Go
field order, and sort map keys first (Go sorts map keys) with `sort_keys=True`.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _string(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    if any(c in out for c in _HTML_ESCAPES):
        out = "".join(_HTML_ESCAPES.get(c, c) for c in out)
    return out


def _float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise ValueError(f"unsupported value: {f!r}")
    a = abs(f)
    if a == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    if 1e-6 <= a < 1e21:
        text = format(Decimal(repr(f)), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    text = repr(f)
    mantissa, _, exp = text.partition("e")
    sign = exp[0] if exp[:1] in "+-" else "+"
    digits = exp.lstrip("+-")
    if sign == "-" and len(digits) == 2 and digits[0] == "0":
        digits = digits[1:]
    return f"{mantissa}e{sign}{digits}"


def _encode(v: Any, sort_keys: bool) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, dict):
        items = sorted(v.items()) if sort_keys else list(v.items())
        return "{" + ",".join(f"{_string(str(k))}:{_encode(x, sort_keys)}" for k, x in items) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_encode(x, sort_keys) for x in v) + "]"
    raise TypeError(f"cannot encode {type(v).__name__} as JSON")


def encode(value: Any, *, sort_keys: bool = False) -> bytes:
    """`json.NewEncoder(w).Encode(value)`: compact Go JSON plus a trailing newline."""
    return (_encode(value, sort_keys) + "\n").encode("utf-8")
