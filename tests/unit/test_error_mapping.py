"""The error hierarchy survives the wire: every status corral sends comes back as its subclass,
with `Retry-After` as `retry_after`, and every wire format's error frame comes from one place."""

from __future__ import annotations

import json

import httpx
import pytest

from corral import errors as E
from corral.client import Client
from corral.server import errors as wire

_SUBCLASSES: list[tuple[type[E.CorralError], float | None]] = [
    (E.BadRequestError, None),
    (E.UnauthorizedError, None),
    (E.ForbiddenError, None),
    (E.NotFoundError, None),
    (E.PayloadTooLargeError, None),
    (E.RateLimitedError, 7.0),
    (E.RequestCanceledError, None),
    (E.ServerBusyError, 3.0),
    (E.ServerBusyError, None),
    (E.InsufficientStorageError, None),
]


@pytest.mark.parametrize(("cls", "retry_after"), _SUBCLASSES)
def test_error_from_status_round_trips_every_subclass(cls: type[E.CorralError], retry_after: float | None) -> None:
    got = E.error_from_status(cls.status, "the message", retry_after)
    assert type(got) is cls
    assert got.status == cls.status and got.message == "the message" and got.retry_after == retry_after


def test_unknown_status_keeps_status_and_retry_after() -> None:
    got = E.error_from_status(502, "bad gateway", 2.0)
    assert type(got) is E.CorralError and got.status == 502 and got.retry_after == 2.0


def test_rate_limited_without_header_still_says_when() -> None:
    assert E.error_from_status(429, "slow down").retry_after == 1.0


@pytest.mark.parametrize(("header", "seconds"), [("5", 5.0), (" 2.5 ", 2.5), ("-1", None), ("nan", None),
                                                  ("Wed, 21 Oct 2015 07:28:00 GMT", None), (None, None)])
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert E.retry_after_seconds(header) == seconds


def _client(status: int, body: dict[str, object], headers: dict[str, str]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return Client("http://127.0.0.1:1", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("status", "cls"), [(503, E.ServerBusyError), (429, E.RateLimitedError)])
def test_client_raises_the_subclass_with_retry_after(status: int, cls: type[E.CorralError]) -> None:
    with _client(status, {"error": "busy"}, {"Retry-After": "12"}) as c, pytest.raises(cls) as info:
        c.version()
    assert info.value.status == status and info.value.message == "busy" and info.value.retry_after == 12.0


def test_client_reads_openai_error_bodies_too() -> None:
    with _client(503, wire.openai_error_body(E.ServerBusyError("full")), {}) as c:
        with pytest.raises(E.ServerBusyError) as info:
            c.ps()
    assert info.value.message == "full" and info.value.retry_after is None


def test_connect_error_is_a_corral_error_but_not_busy() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with Client("http://127.0.0.1:1", transport=httpx.MockTransport(refuse)) as c:
        with pytest.raises(E.ConnectError) as info:
            c.version()
        assert not c.heartbeat()
    assert info.value.status == 503 and not isinstance(info.value, E.ServerBusyError)


def test_retry_after_header_only_for_errors_that_carry_one() -> None:
    assert wire.retry_after_header(E.RateLimitedError("x", retry_after=0.2)) == "1"
    assert wire.retry_after_header(E.ServerBusyError(retry_after=4.6)) == "5"
    assert wire.retry_after_header(E.ServerBusyError()) is None
    assert wire.retry_after_header(E.BadRequestError("x")) is None


def test_stream_error_frames() -> None:
    err = E.ServerBusyError("gone", retry_after=3)
    assert json.loads(wire.native_stream_error(err)) == {"error": "gone"}
    openai = wire.openai_stream_error(err).decode()
    assert openai.startswith("data: ") and json.loads(openai[6:])["error"]["message"] == "gone"
    event, data = wire.anthropic_stream_error(err).decode().strip().split("\n")
    assert event == "event: error"
    assert json.loads(data[6:]) == {"type": "error", "error": {"type": "overloaded_error", "message": "gone"}}
    assert wire.ws_error_message(err, "r1") == {"id": "r1", "error": "gone", "status": 503, "retry_after": 3}
    assert wire.responses_error(err) == {"code": "server_error", "message": "gone"}
