"""The functions a template can call: Go's predefined ones plus Ollama's additions.

Owns: `eq ne lt le gt ge`, `len index slice`, `print printf println`, `html js urlquery`,
`not` (the short-circuit `and`/`or` live in the executor), and Ollama's `json`, `currentDate`,
`yesterdayDate`, `toTypeScriptType`. Each raises `ValueError_` with Go's message on misuse.
Does not own execution or value printing rules (`values`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from corral.template.gotemplate.printf import sprintf
from corral.template.gotemplate.values import (
    MISSING,
    ValueError_,
    get_field,
    go_json,
    is_true,
    sprint_value,
    type_name,
)

__all__ = ["FUNCS", "FUNC_NAMES", "sprint_args"]


def _kind(value: Any) -> str:
    if value is MISSING or value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def eq(arg1: Any, *others: Any) -> bool:
    if not others:
        raise ValueError_("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in others:
        k2 = _kind(arg)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise ValueError_("incompatible types for comparison")
            continue
        if k1 == "other":
            if isinstance(arg1, (list, dict)) or isinstance(arg, (list, dict)):
                raise ValueError_(f"non-comparable type {sprint_value(arg1)}: {type_name(arg1)}")
            if arg1 is arg:
                return True
            continue
        if k1 == "invalid" or arg1 == arg:
            return True
    return False


def ne(arg1: Any, arg2: Any) -> bool:
    return not eq(arg1, arg2)


def lt(arg1: Any, arg2: Any) -> bool:
    k1, k2 = _kind(arg1), _kind(arg2)
    if k1 not in ("int", "float", "string") or k2 not in ("int", "float", "string"):
        raise ValueError_("invalid type for comparison")
    if k1 != k2:
        raise ValueError_("incompatible types for comparison")
    return bool(arg1 < arg2)


def le(arg1: Any, arg2: Any) -> bool:
    return lt(arg1, arg2) or eq(arg1, arg2)


def gt(arg1: Any, arg2: Any) -> bool:
    return not le(arg1, arg2)


def ge(arg1: Any, arg2: Any) -> bool:
    return not lt(arg1, arg2)


def length(item: Any) -> int:
    if isinstance(item, str):
        return len(item.encode("utf-8"))
    if isinstance(item, (list, tuple, dict)):
        return len(item)
    if item is MISSING or item is None:
        raise ValueError_("len of nil pointer")
    raise ValueError_(f"len of type {type_name(item)}")


def _int_index(index: Any, cap: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError_(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise ValueError_(f"index out of range: {index}")
    return index


def index(item: Any, *indexes: Any) -> Any:
    if item is MISSING or item is None:
        raise ValueError_("index of untyped nil")
    for key in indexes:
        if isinstance(item, (list, tuple)):
            i = _int_index(key, len(item))
            if i == len(item):
                raise ValueError_(f"index out of range: {i}")
            item = item[i]
        elif isinstance(item, str):
            i = _int_index(key, len(item.encode("utf-8")))
            data = item.encode("utf-8")
            if i == len(data):
                raise ValueError_(f"index out of range: {i}")
            item = data[i]
        elif isinstance(item, dict):
            item = item.get(key, MISSING)
        elif item is MISSING or item is None:
            raise ValueError_("index of untyped nil")
        else:
            raise ValueError_(f"can't index item of type {type_name(item)}")
    return item


def slice_(item: Any, *indexes: Any) -> Any:
    if item is MISSING or item is None:
        raise ValueError_("slice of untyped nil")
    if len(indexes) > 3:
        raise ValueError_(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise ValueError_("cannot 3-index slice a string")
        data = item.encode("utf-8")
        bounds = [_int_index(i, len(data)) for i in indexes]
    elif isinstance(item, (list, tuple)):
        bounds = [_int_index(i, len(item)) for i in indexes]
    else:
        raise ValueError_(f"can't slice item of type {type_name(item)}")
    start = bounds[0] if bounds else 0
    end = bounds[1] if len(bounds) > 1 else (len(data) if isinstance(item, str) else len(item))
    if start > end:
        raise ValueError_(f"invalid slice index: {start} > {end}")
    if isinstance(item, str):
        return data[start:end].decode("utf-8", errors="replace")
    return list(item[start:end])


def sprint_args(args: tuple[Any, ...]) -> str:
    """fmt.Sprint: operands separated by a space when neither side is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(sprint_value(arg))
    return "".join(out)


def println(*args: Any) -> str:
    return " ".join(sprint_value(a) for a in args) + "\n"


def _eval_args(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint_args(args)


_HTML = {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\x00": "\ufffd"}


def html(*args: Any) -> str:
    return "".join(_HTML.get(ch, ch) for ch in _eval_args(args))


_JS = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026"}
_JS["="] = "\\u003D"


def js(*args: Any) -> str:
    out: list[str] = []
    for ch in _eval_args(args):
        if ch in _JS:
            out.append(_JS[ch])
        elif ch < " " or (ch >= "\x7f" and not ch.isprintable()):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def urlquery(*args: Any) -> str:
    out: list[str] = []
    for byte in _eval_args(args).encode("utf-8"):
        ch = chr(byte)
        if ch in _UNRESERVED:
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def not_(arg: Any) -> bool:
    return not is_true(arg)


def json_func(value: Any) -> str:
    return go_json(value)


def current_date() -> str:
    return datetime.date.today().strftime("%Y-%m-%d")


def yesterday_date() -> str:
    return (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean"}
_TS_TYPES.update({"null": "null", "object": "object", "array": "any[]"})


def to_typescript_type(prop: Any) -> str:
    """A tool parameter's JSON-schema type as a TypeScript type (`"a" | "b"` for enums)."""
    if prop is MISSING or prop is None:
        return "any"
    enum = _lookup(prop, "Enum")
    if isinstance(enum, (list, tuple)) and enum:
        return " | ".join(go_json(v) for v in enum)
    types = _lookup(prop, "Type")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, (list, tuple)) or not types:
        return "any"
    names = []
    for t in types:
        if t == "array":
            items = _lookup(prop, "Items")
            inner = to_typescript_type(items) if items not in (MISSING, None) else "any"
            names.append(f"{inner}[]" if " " not in inner else f"({inner})[]")
        else:
            names.append(_TS_TYPES.get(str(t), "any"))
    return " | ".join(names)


def _lookup(value: Any, name: str) -> Any:
    try:
        found = get_field(value, name)
    except ValueError_:
        return MISSING
    if found is MISSING and isinstance(value, dict):
        found = value.get(name.lower(), MISSING)
    return found


FUNCS: dict[str, Callable[..., Any]] = {
    "eq": eq,
    "ne": ne,
    "lt": lt,
    "le": le,
    "gt": gt,
    "ge": ge,
    "len": length,
    "index": index,
    "slice": slice_,
    "print": lambda *args: sprint_args(args),
    "printf": sprintf,
    "println": println,
    "html": html,
    "js": js,
    "urlquery": urlquery,
    "not": not_,
    "json": json_func,
    "currentDate": current_date,
    "yesterdayDate": yesterday_date,
    "toTypeScriptType": to_typescript_type,
}

FUNC_NAMES = frozenset({*FUNCS, "and", "or"})
