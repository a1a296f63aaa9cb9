"""Rate limiter windows with a fake clock, and the JSON log formatter with request ids."""

from __future__ import annotations

import json
import logging

import pytest

from corral.errors import RateLimitedError
from corral.server.ops.limits import RateLimiter
from corral.server.ops.requestlog import JsonFormatter, RequestIdFilter, new_request_id, request_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_request_window_slides_and_retry_after_is_accurate() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=2, clock=clock)
    limiter.check("k")
    clock.now += 20
    limiter.check("k")
    with pytest.raises(RateLimitedError) as info:
        limiter.check("k")
    assert info.value.retry_after == 40  # the first request leaves the window 60 s after it came
    clock.now += 40.5
    limiter.check("k")
    assert limiter.usage("k") == (2, 0)


def test_tokens_per_minute_blocks_after_budget_is_spent() -> None:
    clock = Clock()
    limiter = RateLimiter(tokens_per_minute=100, clock=clock)
    limiter.check("k")
    limiter.count_tokens("k", 60)
    limiter.check("k")
    clock.now += 30
    limiter.count_tokens("k", 60)
    with pytest.raises(RateLimitedError, match="tokens per minute") as info:
        limiter.check("k")
    assert info.value.retry_after == 30
    limiter.check("other")  # per key
    clock.now += 31
    limiter.check("k")


def test_disabled_limiter_never_limits() -> None:
    limiter = RateLimiter()
    for _ in range(1000):
        limiter.check("k")
    assert not limiter.enabled


def test_json_formatter_carries_request_id_and_extras() -> None:
    record = logging.makeLogRecord({"name": "corral.access", "levelname": "INFO", "msg": "GET %s",
                                    "args": ("/api/tags",), "status": 200})
    token = request_id.set("rid-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "GET /api/tags" and out["request_id"] == "rid-1" and out["status"] == 200
    assert out["level"] == "INFO" and out["logger"] == "corral.access"


def test_request_id_validation() -> None:
    assert new_request_id("abc.DEF-1:2_3") == "abc.DEF-1:2_3"
    for bad in (None, "", "a b", "x" * 200, "a\nb"):
        made = new_request_id(bad)
        assert made != bad and len(made) == 32
