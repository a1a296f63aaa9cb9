"""Per-request LoRA scales (llama-server's `lora` field), resolved against a model's ADAPTER layers.

A generate or chat request (native or /v1) may carry, at the top level or inside `options` (where
Ollama's client libraries can put it),

    "lora": [{"id": 0, "scale": 0.5}, ...]        (llama-server's name and shape)
    "adapters": [{"name": "...", "scale": 0.5}]  (the same; "index" is accepted for "id")

An entry names one of the model's ADAPTER layers by position (`id` / `index`, in Modelfile order)
or by `name` (the adapter GGUF's `general.name`, or its layer digest `sha256:<hex>`, or a prefix of
at least 12 hex digits of it). As in llama-server, adapters the list does not name run at scale 0
for that request; without the field every adapter runs at 1.0, as loaded. The runner applies the
scales per decode, without reloading (`corral.engine.llamacpp.lora`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from corral.errors import BadRequestError, CorralError
from corral.server.runtime import Job

FIELDS = ("lora", "adapters")
LORA_FIELDS = frozenset(FIELDS)
MIN_DIGEST_PREFIX = 12


def lora_field(extras: dict[str, Any]) -> dict[str, Any]:
    """The LoRA field of a request's extra body fields, to carry into a native request."""
    return {k: extras[k] for k in FIELDS if extras.get(k) is not None}


def lora_scales(
    job: Job, extras: dict[str, Any] | None, options: dict[str, Any] | None = None
) -> tuple[float, ...] | None:
    """One scale per ADAPTER layer of `job`'s model, or None when the request sets none."""
    given = [(src, k) for src in (extras or {}, options or {}) for k in FIELDS if src.get(k) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise BadRequestError("set the LoRA scales once: one of 'lora' and 'adapters', top-level or in options")
    src, name = given[0]
    entries = src[name]
    if not isinstance(entries, list):
        raise BadRequestError(f"'{name}' must be an array of objects with 'id' (or 'name') and 'scale'")
    paths = list(job.model.adapters)
    if entries and not paths:
        raise BadRequestError("this model has no LoRA adapters (ADAPTER in its Modelfile) to scale")
    scales = [0.0] * len(paths)
    for entry in entries:
        index, scale = _entry(entry, paths)
        scales[index] = scale
    return tuple(scales)


def _entry(entry: object, paths: list[Path]) -> tuple[int, float]:
    if not isinstance(entry, dict):
        raise BadRequestError("each LoRA adapter must be an object with 'id' (or 'name') and 'scale'")
    scale = entry.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise BadRequestError(f"invalid LoRA scale {scale!r}: a finite number is required")
    keys = [k for k in ("id", "index", "name") if entry.get(k) is not None]
    if len(keys) != 1:
        raise BadRequestError("each LoRA adapter needs exactly one of 'id', 'index' or 'name'")
    value = entry[keys[0]]
    if keys[0] == "name":
        return _by_name(value, paths), float(scale)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(paths):
        raise BadRequestError(
            f"invalid adapter id {value!r}: this model has {len(paths)} LoRA adapter(s), ids 0 to {len(paths) - 1}"
        )
    return value, float(scale)


def _by_name(name: object, paths: list[Path]) -> int:
    if not isinstance(name, str) or not name:
        raise BadRequestError("a LoRA adapter 'name' must be a non-empty string")
    want = name.removeprefix("sha256:").removeprefix("sha256-").lower()
    for i, path in enumerate(paths):
        if _gguf_name(path) == name:
            return i
        digest = path.name.removeprefix("sha256-").lower()
        if len(want) >= MIN_DIGEST_PREFIX and digest.startswith(want):
            return i
    raise BadRequestError(f"no LoRA adapter named {name!r} in this model")


def _gguf_name(path: Path) -> str | None:
    from corral.gguf import read_gguf

    try:
        value = read_gguf(path).kv.get("general.name")
    except (CorralError, OSError):
        return None
    return value if isinstance(value, str) else None
