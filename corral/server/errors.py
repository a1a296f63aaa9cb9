"""The one place where errors become HTTP responses.

`CorralError` carries the status and the user-facing message; this module writes it in the wire
format of the API family the route belongs to (native `{"error": "..."}` here; the OpenAI and
Anthropic layers register their own formatters by path prefix). Request validation failures
become 400s with a readable message, as Ollama's JSON decoding errors do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import BadRequestError, CorralError, RateLimitedError

log = logging.getLogger(__name__)

ErrorFormatter = Callable[[CorralError], dict[str, Any]]


def native_error_body(err: CorralError) -> dict[str, Any]:
    return {"error": err.message}


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
    headers = {}
    if isinstance(err, RateLimitedError):
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
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
    app.state.error_formats = ErrorFormats()

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
        return error_response(request, CorralError(message, status=exc.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, CorralError(f"internal error: {type(exc).__name__}: {exc}"))
