"""Per-key rate limits: requests per minute and tokens per minute over a sliding 60 s window.

`check` is called by the security middleware before a request runs and raises `RateLimitedError`
with the seconds until the window has room again; `count_tokens` is called after a generation
finishes (tokens are only known then), so a key may overshoot its token budget by one request and
is then refused until the window slides. Keys are API key ids, `jwt:<sub>`, or `ip:<addr>` for
anonymous callers. Does not know about HTTP.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from corral.errors import RateLimitedError

WINDOW = 60.0


class _Window:
    """(time, amount) events in the last minute and their running total."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def trim(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount

    def wait_for_room(self, now: float, limit: int, need: int) -> float:
        """Seconds until total + need <= limit."""
        excess = self.total + need - limit
        for at, amount in self.events:
            excess -= amount
            if excess <= 0:
                return max(0.0, at + WINDOW - now)
        return WINDOW


class RateLimiter:
    def __init__(self, requests_per_minute: int = 0, tokens_per_minute: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.clock = clock
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    def check(self, key: str) -> None:
        """Admit one request for `key` or raise RateLimitedError (with `limit` set to which one)."""
        if not self.enabled:
            return
        now = self.clock()
        with self._lock:
            if self.tpm > 0:
                tokens = self._tokens.setdefault(key, _Window())
                tokens.trim(now)
                if tokens.total >= self.tpm:
                    wait = tokens.wait_for_room(now, self.tpm, 1)
                    raise _limited(wait, f"rate limit exceeded: {self.tpm} tokens per minute")
            if self.rpm > 0:
                window = self._requests.setdefault(key, _Window())
                window.trim(now)
                if window.total >= self.rpm:
                    wait = window.wait_for_room(now, self.rpm, 1)
                    raise _limited(wait, f"rate limit exceeded: {self.rpm} requests per minute")
                window.add(now, 1)

    def usage(self, key: str) -> tuple[int, int]:
        """(requests, tokens) counted for `key` in the current window."""
        now = self.clock()
        with self._lock:
            out = []
            for table in (self._requests, self._tokens):
                window = table.get(key)
                if window is not None:
                    window.trim(now)
                out.append(window.total if window is not None else 0)
        return out[0], out[1]

    def count_tokens(self, key: str | None, tokens: int) -> None:
        if self.tpm <= 0 or key is None or tokens <= 0:
            return
        now = self.clock()
        with self._lock:
            window = self._tokens.setdefault(key, _Window())
            window.trim(now)
            window.add(now, tokens)


def _limited(wait: float, message: str) -> RateLimitedError:
    return RateLimitedError(message, retry_after=max(1.0, math.ceil(wait)))
