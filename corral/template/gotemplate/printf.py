"""Go's fmt.Sprintf for the verbs templates use.

Owns: `%s %d %v %q %f %t %x %X %e %g %c %%` with flags (`-+# 0`), width and precision, and Go's
error notations (`%!d(string=x)`, `%!s(MISSING)`, `%!(EXTRA type=value)`). Does not own the
printing of single values (`values.sprint_value`).
"""

from __future__ import annotations

import re
from typing import Any

from corral.template.gotemplate.values import (
    MISSING,
    format_float,
    sprint_value,
    type_name,
)

__all__ = ["go_quote", "sprintf"]

_SPEC = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d*|\*))?(.)", re.DOTALL)


def go_quote(text: str) -> str:
    """strconv.Quote: a double-quoted Go string literal with Go escapes."""
    out = ['"']
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in named:
            out.append(named[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _bad(verb: str, arg: Any) -> str:
    if arg is MISSING or arg is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(arg)}={sprint_value(arg)})"


def _format_int(value: int, verb: str, flags: str, prec: str | None) -> str:
    digits = {"d": str(abs(value)), "x": f"{abs(value):x}", "X": f"{abs(value):X}"}
    digits.update({"o": f"{abs(value):o}", "b": f"{abs(value):b}"})
    body = digits[verb]
    if prec is not None and prec != "":
        body = body.rjust(int(prec), "0")
    if "#" in flags and verb in "xX":
        body = "0" + verb + body
    sign = "-" if value < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
    return sign + body


def _format_float(value: float, verb: str, flags: str, prec: str | None) -> str:
    p = int(prec) if prec not in (None, "") else (6 if verb in "fFeE" else -1)
    if verb in "fF":
        text = format_float(value, "f", p)
    elif verb in "eE":
        text = format_float(value, "e", p)
    elif p < 0:
        text = format_float(value)
    else:
        text = _go_g(value, p)
    if verb == "E":
        text = text.upper()
    if "+" in flags and not text.startswith("-"):
        text = "+" + text
    return text


def _go_g(value: float, prec: int) -> str:
    text = f"{value:.{max(prec, 1)}g}"
    if "e" in text:
        mant, _, exp = text.partition("e")
        sign = exp[0]
        return f"{mant}e{sign}{exp[1:].lstrip('0').rjust(2, '0')}"
    return text


def _format_one(verb: str, flags: str, prec: str | None, arg: Any) -> str:
    if verb == "v":
        return sprint_value(arg)
    if verb == "T":
        return type_name(arg)
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    if verb == "t":
        return ("true" if arg else "false") if isinstance(arg, bool) else _bad(verb, arg)
    if verb in "dobxX" and is_int:
        return _format_int(arg, verb, flags, prec)
    if verb == "c" and is_int:
        return chr(arg)
    if verb in "eEfFgG" and isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return _format_float(float(arg), verb, flags, prec) if isinstance(arg, float) else _bad(verb, arg)
    if verb in "xX" and isinstance(arg, float):
        return _bad(verb, arg)
    if isinstance(arg, str) or hasattr(arg, "go_string"):
        text = arg if isinstance(arg, str) else str(arg.go_string())
        if prec not in (None, ""):
            text = text[: int(prec or 0)]
        if verb == "s":
            return text
        if verb == "q":
            return go_quote(text)
        if verb in "xX":
            hexed = text.encode("utf-8").hex()
            return hexed.upper() if verb == "X" else hexed
    if verb == "s" and isinstance(arg, (list, tuple)):
        return "[" + " ".join(_format_one("s", flags, prec, a) for a in arg) + "]"
    if verb == "q" and is_int:
        return "'" + chr(arg) + "'"
    return _bad(verb, arg)


def sprintf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf(fmt, args...) for the verbs and flags above."""
    out: list[str] = []
    argi = 0
    pos = 0
    while True:
        i = fmt.find("%", pos)
        if i < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:i])
        match = _SPEC.match(fmt, i)
        if match is None:
            out.append("%!(NOVERB)")
            break
        flags, width, prec, verb = match.groups()
        pos = match.end()
        if verb == "%":
            out.append("%")
            continue
        if width == "*" or prec == "*":
            out.append("%!(BADWIDTH)")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        text = _format_one(verb, flags, prec, args[argi])
        argi += 1
        if width:
            w = int(width)
            if "-" in flags:
                text = text.ljust(w)
            elif "0" in flags and verb in "dfeEgGxX" and not text.startswith("%!"):
                sign = text[0] if text[:1] in "+-" else ""
                text = sign + text[len(sign) :].rjust(w - len(sign), "0")
            else:
                text = text.rjust(w)
        out.append(text)
    if argi < len(args):
        extra = ", ".join(f"{type_name(a)}={sprint_value(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)
