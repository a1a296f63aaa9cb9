"""Text assembly for streamed tokens: UTF-8 boundaries and stop strings.

Owns two small pure state machines used by the batching loop, one per sequence:
`Utf8Assembler` turns token pieces (raw bytes) into text without ever emitting half a multibyte
character; `StopMatcher` holds back text that could be the start of a stop string and reports a
match (the stop string itself and anything after it are never emitted). Knows nothing of llama.cpp.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


class Utf8Assembler:
    """Feed raw token bytes, get back only complete UTF-8 text."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete tail becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


def _partial_stop_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        upto = min(len(stop) - 1, len(text))
        for n in range(upto, best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


@dataclass
class StopMatcher:
    """Stop-string detection over streamed text with hold-back of possible partial matches."""

    stops: tuple[str, ...]
    _held: str = field(default="", init=False)
    stopped: bool = field(default=False, init=False)

    def feed(self, text: str) -> str:
        """Add new text; return the part that is safe to emit now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        first = -1
        for stop in self.stops:
            if not stop:
                continue
            at = buf.find(stop)
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            self.stopped = True
            self._held = ""
            return buf[:first]
        keep = _partial_stop_len(buf, self.stops)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation the held text is real output."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out
