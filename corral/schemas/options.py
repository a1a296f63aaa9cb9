"""Runtime options (spec §2): the accepted keys, their types and defaults, and the merge rules.

Options are split by lifetime, as Ollama's `api.Runner` / `api.Options`:
`LoadOptions` change what a runner loads (a difference forces a reload); `SampleOptions` are per
request and never do. Merge order: defaults <- model `.params` layer <- request `options`.
Unknown request keys are ignored with a warning; wrong types are a 400 with the spec's text.
Modelfile `PARAMETER` values arrive as strings and are converted by `parse_parameter`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from corral.errors import BadRequestError

log = logging.getLogger(__name__)

Kind = Literal["int", "float", "bool", "array"]

LOAD_KEYS: dict[str, Kind] = {
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
}
SAMPLE_KEYS: dict[str, Kind] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "array",
    "draft_num_predict": "int",
}
ALL_KEYS: dict[str, Kind] = {**LOAD_KEYS, **SAMPLE_KEYS}
DEPRECATED_KEYS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
_TYPE_NAMES = {"int": "integer", "float": "float32", "bool": "boolean", "array": "array"}


@dataclass(frozen=True)
class LoadOptions:
    """Options fixed when a runner loads; any difference means a reload."""

    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0


@dataclass(frozen=True)
class SampleOptions:
    """Per-request sampling options with the spec's defaults."""

    num_keep: int = 4
    seed: int = -1
    num_predict: int = -1
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    temperature: float = 0.8
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    draft_num_predict: int = 0


def coerce_option(name: str, value: Any) -> Any:
    """Check one JSON option value against its kind; raise the spec's 400 on a wrong type."""
    kind = ALL_KEYS[name]
    err = BadRequestError(f'option "{name}" must be of type {_TYPE_NAMES[kind]}')
    if kind == "bool":
        if not isinstance(value, bool):
            raise err
        return value
    if isinstance(value, bool):
        raise err
    if kind == "int":
        if not isinstance(value, int | float):
            raise err
        return int(value)
    if kind == "float":
        if not isinstance(value, int | float):
            raise err
        return float(value)
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise err
    return tuple(value)


def clean_options(raw: Mapping[str, Any] | None, *, source: str = "request") -> dict[str, Any]:
    """Validate a JSON options map: drop unknown/deprecated keys (logged), coerce types."""
    out: dict[str, Any] = {}
    for name, value in (raw or {}).items():
        if name not in ALL_KEYS:
            log.warning("invalid option provided: option=%s source=%s", name, source)
            continue
        if value is None:
            continue
        out[name] = coerce_option(name, value)
    return out


@dataclass(frozen=True)
class ResolvedOptions:
    """The merged options for one request."""

    load: LoadOptions
    sample: SampleOptions

    @classmethod
    def merge(
        cls,
        model_params: Mapping[str, Any] | None,
        request: Mapping[str, Any] | None,
        *,
        default_num_ctx: int = 4096,
    ) -> ResolvedOptions:
        """defaults <- model params <- request options (spec §2)."""
        merged = {**clean_options(model_params, source="model"), **clean_options(request)}
        load_fields = {f.name for f in fields(LoadOptions)}
        load = LoadOptions(num_ctx=default_num_ctx)
        load = replace(load, **{k: v for k, v in merged.items() if k in load_fields})
        sample = SampleOptions(**{k: v for k, v in merged.items() if k not in load_fields})
        return cls(load=load, sample=sample)


def parse_parameter(name: str, value: str) -> Any:
    """Convert a Modelfile `PARAMETER name value` string; raise the spec's errors.

    Returns None for deprecated keys (the caller warns `parameter X is deprecated` and drops it).
    `stop` returns a single string; callers accumulate repeated stops into a list.
    """
    key = name.lower()
    if key in DEPRECATED_KEYS:
        return None
    kind = ALL_KEYS.get(key)
    if kind is None:
        raise BadRequestError(f"unknown parameter '{name}'")
    text = value.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            try:
                return int(float(text))
            except ValueError:
                raise BadRequestError(f"invalid int value [{value}]") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise BadRequestError(f"invalid float value [{value}]") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "t", "true"):
            return True
        if lowered in ("0", "f", "false"):
            return False
        raise BadRequestError(f"invalid bool value [{value}]")
    return text
