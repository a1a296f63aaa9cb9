"""The one place where errors become HTTP responses and stream frames.

`CorralError` carries the status and the user-facing message; this module writes it in every wire
format corral speaks: the body of an error response (native `{"error": "..."}`, OpenAI under
/v1/, Anthropic under /v1/messages: chosen by path prefix), the frame that ends a stream after its first byte
(an NDJSON line, an OpenAI SSE `data:` frame, an Anthropic SSE `error` event), and a WebSocket
error message. `retry_after` becomes the `Retry-After` header. Request validation failures become
400s with a readable message, as Ollama's JSON decoding errors do.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import BadRequestError, CorralError, error_from_status
from corral.server.framing import ndjson_line, sse_data, sse_event

log = logging.getLogger(__name__)

ErrorFormatter = Callable[[CorralError], dict[str, Any]]


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error",
                    529: "overloaded_error"}


def unexpected_error(exc: Exception) -> CorralError:
    """What a stream reports for an exception that is not a `CorralError` (logged here)."""
    log.exception("error mid-stream")
    return CorralError(str(exc) or type(exc).__name__)


def retry_after_header(err: CorralError) -> str | None:
    """`Retry-After` in whole seconds (at least 1) for an error that carries one."""
    return None if err.retry_after is None else str(max(1, round(err.retry_after)))


# Native (/api) ----------------------------------------------------------------------------------
def native_error_body(err: CorralError) -> dict[str, Any]:
    return {"error": err.message}


def native_stream_error(err: CorralError) -> bytes:
    """The last NDJSON line of a stream that failed after its first byte."""
    return ndjson_line(native_error_body(err))


def ws_error_message(err: CorralError, rid: object = None) -> dict[str, Any]:
    """A WebSocket request's final error (`id` set) or a protocol error (`type: error`)."""
    out: dict[str, Any] = {"id": rid} if rid is not None else {"type": "error"}
    out.update(error=err.message, status=err.status)
    retry = retry_after_header(err)
    if retry is not None:
        out["retry_after"] = int(retry)
    return out


# OpenAI (/v1) -----------------------------------------------------------------------------------
def openai_error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def openai_error_body(err: CorralError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": openai_error_type(err.status), "param": None,
                      "code": None}}


def openai_stream_error(err: CorralError) -> bytes:
    return sse_data(openai_error_body(err))


def responses_error(err: CorralError) -> dict[str, Any]:
    """The `error` of a failed Responses API object (and the fields of its `error` event)."""
    return {"code": "server_error", "message": err.message}


# Anthropic (/v1/messages) -----------------------------------------------------------------------
def anthropic_error_body(err: CorralError) -> dict[str, Any]:
    kind = _ANTHROPIC_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message},
            "request_id": f"req_{secrets.token_hex(12)}"}


def anthropic_stream_error(err: CorralError) -> bytes:
    return sse_event("error", {"type": "error", "error": anthropic_error_body(err)["error"]})


class ErrorFormats:
    """Chooses the error body format for a request path (longest matching prefix wins)."""

    def __init__(self) -> None:
        self._formats: list[tuple[str, ErrorFormatter]] = []

    def register(self, prefix: str, formatter: ErrorFormatter) -> None:
        self._formats.append((prefix, formatter))
        self._formats.sort(key=lambda item: len(item[0]), reverse=True)

    def body(self, path: str, err: CorralError) -> dict[str, Any]:
        for prefix, formatter in self._formats:
            if path.startswith(prefix):
                return formatter(err)
        return native_error_body(err)


def error_response(request: Request, err: CorralError) -> JSONResponse:
    formats: ErrorFormats = request.app.state.error_formats
    retry = retry_after_header(err)
    headers = {"Retry-After": retry} if retry is not None else {}
    return JSONResponse(formats.body(request.url.path, err), status_code=err.status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """Turn pydantic's error list into one readable sentence."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "missing" and not loc:
        return "missing request body"
    if first.get("type") == "json_invalid":
        return f"invalid JSON: {first.get('msg', '')}".strip()
    where = ".".join(loc)
    msg = str(first.get("msg", "invalid value"))
    return f"{where}: {msg}" if where else msg


def install_error_handlers(app: FastAPI) -> None:
    app.state.error_formats = formats = ErrorFormats()
    formats.register("/v1/", openai_error_body)
    formats.register("/v1/messages", anthropic_error_body)

    @app.exception_handler(CorralError)
    async def _corral(request: Request, exc: CorralError) -> Response:
        if exc.status >= 500:
            log.error("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, BadRequestError(validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = "404 page not found"
        if exc.status_code == 405:
            message = "405 method not allowed"
        return error_response(request, error_from_status(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, CorralError(f"internal error: {type(exc).__name__}: {exc}"))
