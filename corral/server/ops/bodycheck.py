"""Request bodies that parse as JSON but that no route can use: rejected once, before routing.

Python's JSON decoder accepts two things that later fail deep inside a route: an unpaired UTF-16
surrogate escape (`"\\ud800"`, which decodes to a `str` that cannot be encoded as UTF-8, so
rendering, tokenizing or writing the reply raised UnicodeEncodeError: a 500, sometimes a broken
connection), and nesting deep enough to exhaust the interpreter's recursion limit in whatever
recurses over the value next (pydantic, the schema-to-grammar converter, template rendering,
`json.dumps`). `JSONBodyCheck` looks at every buffered JSON body of the API (`/api/*`, `/v1/*`,
not blob uploads) with a few linear regex scans and answers a 400 in the route's error format
(`ErrorFormats`) naming the problem, so no route ever sees such a value.

Does not parse the JSON (FastAPI does, after this) nor buffer or cap bodies (the security
middleware, which sits outside this one, already has).
"""

from __future__ import annotations

import json
import re
from collections import deque
from itertools import accumulate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import BadRequestError, CorralError
from corral.server.errors import ErrorFormats

MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects accepted in a request body."""

_PREFIXES = ("/api/", "/v1/")
_EXEMPT = ("/api/blobs/",)
_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD]([89abAB]|[c-fC-F])[0-9a-fA-F]{2}")
_LOW_ESCAPE = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _decode(body: bytes) -> str:
    """The body as text, strictly: raw surrogates (CESU-8 `ED A0 80`), which Python's JSON decoder
    lets through, are refused with every other invalid byte sequence."""
    try:
        return body.decode(json.detect_encoding(body))
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"invalid request body: bytes {exc.start}-{exc.end - 1} are not valid {exc.encoding}"
        ) from None


def _escaped(text: str, pos: int) -> bool:
    """Whether the backslash at `pos` is itself escaped (preceded by an odd run of backslashes)."""
    run = 0
    while pos - run - 1 >= 0 and text[pos - run - 1] == "\\":
        run += 1
    return run % 2 == 1


def unpaired_surrogate(text: str) -> str | None:
    """The first `\\uXXXX` escape in JSON text that is half of a UTF-16 pair without its other
    half, or None. Literal text such as `\\\\ud800` (an escaped backslash) is not an escape."""
    low_expected_at = -1
    for m in _SURROGATE_ESCAPE.finditer(text):
        start = m.start()
        if start != low_expected_at and _escaped(text, start):
            continue
        high = m.group(1) in "89abAB"
        if high and _LOW_ESCAPE.match(text, m.end()):
            low_expected_at = m.end()
        elif high or start != low_expected_at:
            return m.group(0)
    return None


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def check_json_text(text: str) -> None:
    """Raise BadRequestError for JSON text with an unpaired surrogate escape or nested too deeply
    (also used for /api/ws messages, which arrive as text)."""
    lone = unpaired_surrogate(text)
    if lone is not None:
        raise BadRequestError(
            f"invalid request body: {lone} is an unpaired UTF-16 surrogate; text must be valid Unicode"
        )
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and nesting_depth(text) > MAX_JSON_DEPTH:
        raise BadRequestError(f"invalid request body: JSON nested deeper than {MAX_JSON_DEPTH} levels")


def check_json_body(body: bytes) -> None:
    """Raise BadRequestError for a body that is not valid Unicode or nests too deeply."""
    if body:
        check_json_text(_decode(body))


def _checked(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    return (scope["type"] == "http" and scope.get("method", "").upper() in _METHODS
            and path.startswith(_PREFIXES) and not path.startswith(_EXEMPT))


class JSONBodyCheck:
    """ASGI middleware running `check_json_body` on API bodies, then replaying them to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _checked(scope):
            await self.app(scope, receive, send)
            return
        messages: deque[Message] = deque()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        try:
            check_json_body(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request"))
        except CorralError as err:
            await _send_error(scope, send, err)
            return

        async def replay() -> Message:
            return messages.popleft() if messages else await receive()

        await self.app(scope, replay, send)


async def _send_error(scope: Scope, send: Send, err: CorralError) -> None:
    formats: ErrorFormats | None = getattr(getattr(scope.get("app"), "state", None), "error_formats", None)
    body = json.dumps((formats or ErrorFormats()).body(scope["path"], err)).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
