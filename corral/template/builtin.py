"""The table of built-in chat templates and autodetection from a GGUF Jinja template.

Owns: the data files under `corral/template/builtin/` (`<name>.gotmpl` Go template text,
`<name>.json` default parameters such as stop tokens, `<name>.jinja` a reference Hugging Face
template, `index.json` Ollama's table of reference Jinja texts), loading them with
importlib.resources, and `detect_template` (Ollama's `template.Named`: the nearest reference
Jinja text by Levenshtein distance, accepted when the distance is below 100).

Does not own: parsing or executing templates (`corral.template.gotemplate`, `corral.template.jinja`)
or deciding when the store writes a template layer (`corral.store`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = [
    "BuiltinTemplate",
    "builtin_templates",
    "detect_template",
    "get_builtin",
    "levenshtein",
    "reference_jinja",
]

_PACKAGE = "corral.template"
_DATA_DIR = "builtin"
# Ollama accepts the nearest reference template only when it is this close (template.Named).
MAX_DISTANCE = 100


@dataclass(frozen=True)
class BuiltinTemplate:
    """One entry of the built-in table: Go template text plus default model parameters."""

    name: str
    template: str
    params: dict[str, Any] = field(default_factory=dict)


def _data_files() -> Any:
    return resources.files(_PACKAGE).joinpath(_DATA_DIR)


@functools.cache
def builtin_templates() -> dict[str, BuiltinTemplate]:
    """All built-in templates by name (loaded once from the package data)."""
    table: dict[str, BuiltinTemplate] = {}
    for entry in sorted(_data_files().iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".gotmpl"):
            continue
        name = entry.name.removesuffix(".gotmpl")
        params_file = _data_files().joinpath(f"{name}.json")
        params: dict[str, Any] = {}
        if params_file.is_file():
            params = json.loads(params_file.read_text(encoding="utf-8"))
        table[name] = BuiltinTemplate(name, entry.read_text(encoding="utf-8"), params)
    return table


def get_builtin(name: str) -> BuiltinTemplate:
    """The built-in template called `name`; raises KeyError when there is none."""
    table = builtin_templates()
    if name not in table:
        raise KeyError(name)
    return table[name]


def reference_jinja(name: str) -> str | None:
    """The reference Hugging Face Jinja template stored for a built-in name, if any."""
    path = _data_files().joinpath(f"{name}.jinja")
    if not path.is_file():
        return None
    text: str = path.read_text(encoding="utf-8")
    return text


@functools.cache
def _index() -> tuple[tuple[str, str], ...]:
    """Ollama's index.json: (reference jinja text, built-in name) pairs, in file order."""
    raw = json.loads(_data_files().joinpath("index.json").read_text(encoding="utf-8"))
    return tuple((str(item["template"]), str(item["name"])) for item in raw)


def levenshtein(a: str, b: str, cutoff: int | None = None) -> int:
    """Edit distance between `a` and `b` over code points (Go runes).

    Uses Myers/Hyyrö bit-parallel dynamic programming: one pass over `b` with
    big-integer bit vectors as wide as `a`. With `cutoff`, returns some value >= cutoff
    as soon as the distance is known to reach it (early exit).
    """
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return len(b)
    if cutoff is not None and len(b) - len(a) >= cutoff:
        return len(b) - len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << len(a)) - 1
    high = 1 << (len(a) - 1)
    pv, mv, score = mask, 0, len(a)
    remaining = len(b)
    for ch in b:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
        remaining -= 1
        if cutoff is not None and score - remaining >= cutoff:
            return score - remaining
    return score


def detect_template(jinja_text: str) -> BuiltinTemplate | None:
    """The built-in template whose reference Jinja text is nearest to `jinja_text`.

    Mirrors Ollama's `template.Named`: the first entry with the smallest distance wins,
    and only a distance below 100 counts as a match.
    """
    best_name: str | None = None
    best = MAX_DISTANCE
    for reference, name in _index():
        if abs(len(reference) - len(jinja_text)) >= best:
            continue
        distance = levenshtein(jinja_text, reference, cutoff=best)
        if distance < best:
            best, best_name = distance, name
    if best_name is None:
        return None
    return builtin_templates().get(best_name)
