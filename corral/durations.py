"""Go-style durations as Ollama's wire and environment use them.

`keep_alive` is a JSON number of seconds (float; negative = forever) or a Go duration string
(`"5m"`, `"1h30m"`, `"-1m"`, `"0"`); a unit-less string such as `"3600"` is an error on the wire
but accepted in the environment (spec §1, §4). Durations are carried as float seconds, with
`math.inf` for "forever".
"""

from __future__ import annotations

import math
import re

from corral.errors import BadRequestError

FOREVER = math.inf

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go `time.ParseDuration` string into seconds; raise ValueError if malformed."""
    s = text.strip()
    if not s:
        raise ValueError(f"time: invalid duration {text!r}")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def keep_alive_seconds(value: object) -> float | None:
    """Decode a wire `keep_alive`: None stays None; negative means forever (math.inf)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequestError("keep_alive must be a number of seconds or a duration string")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
    else:
        raise BadRequestError("keep_alive must be a number of seconds or a duration string")
    return FOREVER if seconds < 0 else seconds


def env_duration_seconds(text: str) -> float:
    """Decode an environment duration: a Go duration or plain integer seconds."""
    s = text.strip().strip("\"'")
    try:
        seconds = float(int(s))
    except ValueError:
        seconds = parse_go_duration(s)
    return FOREVER if seconds < 0 else seconds


def format_go_duration(seconds: float) -> str:
    """Format seconds like Go's Duration.String (`5m0s`, `1h0m0s`, `1.5s`, `0s`)."""
    if math.isinf(seconds):
        return "-1"
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    total = abs(seconds)
    hours = int(total // 3600)
    minutes = int((total % 3600) // 60)
    secs = total - hours * 3600 - minutes * 60
    sec_text = f"{secs:.9f}".rstrip("0").rstrip(".")
    if hours:
        out = f"{hours}h{minutes}m{sec_text}s"
    elif minutes:
        out = f"{minutes}m{sec_text}s"
    elif total < 1:
        out = f"{total * 1000:.6f}".rstrip("0").rstrip(".") + "ms"
    else:
        out = f"{sec_text}s"
    return ("-" if neg else "") + out
