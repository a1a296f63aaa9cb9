"""Human-readable formats the CLI prints, matching Ollama's (format/bytes.go, format/time.go)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from corral.gguf import human_number
from corral.schemas.native import ShowResponse

_UNITS = [(1000**4, "TB"), (1000**3, "GB"), (1000**2, "MB"), (1000, "KB")]


def human_bytes(b: int) -> str:
    """Decimal units as Ollama prints them: `98 MB`, `1.5 GB`, `512 B`."""
    for size, unit in _UNITS:
        if b >= size:
            value = b / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{b} B"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def human_time(t: datetime, now: datetime | None = None) -> str:
    """`3 minutes ago`, `4 minutes from now`, or `Forever` for dates decades ahead."""
    now = now or datetime.now(UTC)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = (now - t).total_seconds()
    if delta < -20 * 365 * 24 * 3600:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], pad: int = 4) -> str:
    """A borderless, left-aligned table with `pad` spaces between columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((" " * pad).join(cells).rstrip())
    return "\n".join(lines)


def projector_rows(pi: dict[str, Any]) -> list[tuple[str, str]]:
    """`show`'s Projector section, as Ollama prints it: architecture, parameters, embedding length,
    dimensions (of the vision or audio encoder)."""
    arch = str(pi.get("general.architecture", ""))
    rows = [("architecture", arch)] if arch else []
    if isinstance(pi.get("general.parameter_count"), int):
        rows.append(("parameters", human_number(int(pi["general.parameter_count"]))))
    for suffix, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
        value = next((pi[k] for m in ("vision", "audio") if (k := f"{arch}.{m}.{suffix}") in pi), None)
        if value is not None:
            rows.append((label, str(value)))
    return rows


def render_show(info: ShowResponse, *, verbose: bool = False) -> str:
    """The default `show` view: Model, Capabilities, Parameters, System, License sections."""
    mi = info.model_info or {}
    arch = str(mi.get("general.architecture", info.details.family if info.details else ""))
    rows: list[tuple[str, str]] = [("architecture", arch)]
    if info.details:
        rows.append(("parameters", info.details.parameter_size))
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        if f"{arch}.{key}" in mi:
            rows.append((label, str(mi[f"{arch}.{key}"])))
    if info.details:
        rows.append(("quantization", info.details.quantization_level))
    out = ["  Model"] + [f"    {k:<20}{v}" for k, v in rows] + [""]
    if info.capabilities:
        out += ["  Capabilities"] + [f"    {c}" for c in info.capabilities] + [""]
    if info.projector_info:
        out += ["  Projector"] + [f"    {k:<20}{v}" for k, v in projector_rows(info.projector_info)] + [""]
    if info.parameters:
        out += ["  Parameters"] + [f"    {line}" for line in info.parameters.splitlines()] + [""]
    if info.system:
        out += ["  System"] + [f"    {line}" for line in info.system.splitlines()[:2]] + [""]
    if info.license:
        out += ["  License"] + [f"    {line}" for line in info.license.splitlines()[:2]] + [""]
    if verbose and mi:
        out += ["  Metadata"] + [f"    {k:<40}{v}" for k, v in sorted(mi.items())] + [""]
    return "\n".join(out)
