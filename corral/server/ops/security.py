"""The security middleware: request ids, host check, CORS, authentication, limits, logs, metrics.

A pure ASGI middleware (not BaseHTTPMiddleware), so streamed responses pass through unbuffered.
Order per request: request id → DNS-rebinding host check → CORS (preflight answered here) →
credential and scope → rate limit → JSON body cap (buffered; blob and registry uploads are
streamed and exempt) → the app, with an idle timeout on every write. Errors raised here are
written with the same `ErrorFormats` the exception handlers use, so a 401 on `/v1/*` has the
OpenAI shape. After the response: access log, audit line for manage/admin actions, metrics.
Auth decisions live in `corral.auth`; this module only applies them to HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.auth.authenticator import ANONYMOUS, Principal
from corral.errors import CorralError, ForbiddenError, PayloadTooLargeError, RateLimitedError
from corral.server.context import AppContext
from corral.server.errors import ErrorFormats, retry_after_header
from corral.server.ops.keys_api import router as keys_router
from corral.server.ops.metrics import current_key_id, install_metrics_route
from corral.server.ops.requestlog import log_access, log_audit, new_request_id, request_id

log = logging.getLogger(__name__)
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_STREAMED_PREFIXES = ("/api/blobs/", "/v2/")


class RequestTimeoutError(CorralError):
    status = 408


class StreamIdleTimeout(Exception):
    """The client read nothing for `stream_idle_timeout`; the connection is dropped."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def credential_of(scope: Scope) -> str | None:
    """`Authorization: Bearer <token>` (what the OpenAI/Anthropic SDKs send) or `x-api-key`."""
    auth = header(scope, b"authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = header(scope, b"x-api-key")
    return key.strip() if key and key.strip() else None


def same_origin(scope: Scope, origin: str) -> bool:
    """The page making the request was served by this server (the /ui page on a non-local host name):
    not a cross-origin request, so CORS does not apply. The host check has already vetted `Host`."""
    host = header(scope, b"host")
    return bool(host) and origin.strip().lower() == f"{scope.get('scheme', 'http')}://{host}".lower()


def route_label(scope: Scope) -> str:
    """The route template (bounded label cardinality); matched again for requests rejected early."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match == Match.FULL and hasattr(candidate, "path"):
            return str(candidate.path)
    return "unmatched"


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app = app
        s = ctx.settings
        self.auth = ctx.services.auth
        self.limiter = ctx.services.limiter
        self.metrics = ctx.services.metrics
        self.hosts = ctx.hosts
        self.cors = ctx.cors
        self.max_body = s.max_body
        self.read_timeout = s.header_timeout_seconds
        self.idle_timeout = s.stream_idle_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id(header(scope, b"x-request-id"))
        rid_token = request_id.set(rid)
        started = time.monotonic()
        info: dict[str, Any] = {"status": 0, "principal": None, "scope": None}
        origin = header(scope, b"origin")
        extra = [(b"x-request-id", rid.encode())]
        if origin and self.cors.origin_allowed(origin):
            extra += self.cors.response_headers(origin)
        wrapped = self._wrap_send(send, extra, info)
        try:
            await self._handle(scope, receive, wrapped, info, origin)
        except (StreamIdleTimeout, ClientDisconnect) as exc:
            log.warning("%s %s: client gone (%s)", scope["method"], scope["path"], type(exc).__name__)
        finally:
            self._after(scope, info, rid, time.monotonic() - started)
            request_id.reset(rid_token)

    def _wrap_send(self, send: Send, extra: list[tuple[bytes, bytes]], info: dict[str, Any]) -> Send:
        timeout = self.idle_timeout

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise StreamIdleTimeout(f"client read nothing for {timeout:.0f}s") from None

        return wrapped

    async def _handle(self, scope: Scope, receive: Receive, send: Send, info: dict[str, Any],
                      origin: str | None) -> None:
        method = scope["method"].upper()
        try:
            if not self.hosts.allowed(header(scope, b"host")):
                raise ForbiddenError("forbidden: host not allowed")
            if origin and not self.cors.origin_allowed(origin) and not same_origin(scope, origin):
                raise ForbiddenError("forbidden: origin not allowed")
            if method == "OPTIONS":
                headers = self.cors.preflight_headers(header(scope, b"access-control-request-headers"))
                await send({"type": "http.response.start", "status": 204,
                            "headers": headers if origin else []})
                await send({"type": "http.response.body", "body": b""})
                return
            principal = self._authenticate(scope, info)
            key_token = current_key_id.set(self._rate_key(scope, principal))
            try:
                self._rate_limit(scope, principal)
                if method in _BODY_METHODS and not scope["path"].startswith(_STREAMED_PREFIXES):
                    receive = await self._buffer_body(scope, receive)
                else:
                    receive = self._timed_receive(receive)
                await self.app(scope, receive, send)
            finally:
                current_key_id.reset(key_token)
        except CorralError as err:
            if info["status"]:
                raise
            await self._error(scope, send, err)

    def _authenticate(self, scope: Scope, info: dict[str, Any]) -> Principal | None:
        needed = self._needed(scope)
        info["scope"] = needed
        if needed is None:
            return None
        principal = self.auth.authenticate(credential_of(scope))
        info["principal"] = principal
        self.auth.authorize(principal, needed)
        scope.setdefault("state", {})["principal"] = principal
        return principal

    @staticmethod
    def _needed(scope: Scope) -> str | None:
        from corral.auth.scopes import required_scope

        return required_scope(scope["method"], scope["path"])

    @staticmethod
    def _rate_key(scope: Scope, principal: Principal | None) -> str | None:
        if principal is not None and principal is not ANONYMOUS and principal.key_id:
            return principal.key_id
        client = scope.get("client")
        return f"ip:{client[0]}" if client else "ip:unknown"

    def _rate_limit(self, scope: Scope, principal: Principal | None) -> None:
        if principal is None or not self.limiter.enabled:
            return
        key = self._rate_key(scope, principal)
        try:
            self.limiter.check(key or "ip:unknown")
        except RateLimitedError as err:
            self.metrics.rate_limited.labels(limit=getattr(err, "limit", "requests")).inc()
            raise

    async def _buffer_body(self, scope: Scope, receive: Receive) -> Receive:
        """Read the whole JSON body (capped, with a per-read idle timeout), then replay it."""
        declared = header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLargeError(f"request body too large (limit {self.max_body} bytes)")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._read(receive)
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(f"request body too large (limit {self.max_body} bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[bytes] = [b"".join(chunks)]

        async def replay() -> Message:
            if body:
                return {"type": "http.request", "body": body.pop(), "more_body": False}
            return await receive()

        return replay

    async def _read(self, receive: Receive) -> Message:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await receive()
        except TimeoutError:
            raise RequestTimeoutError("timed out reading the request body") from None

    def _timed_receive(self, receive: Receive) -> Receive:
        """Streamed uploads: a client that stalls longer than the read timeout is disconnected."""

        async def timed() -> Message:
            try:
                async with asyncio.timeout(self.read_timeout):
                    return await receive()
            except TimeoutError:
                return {"type": "http.disconnect"}

        return timed

    async def _error(self, scope: Scope, send: Send, err: CorralError) -> None:
        app = scope.get("app")
        formats: ErrorFormats | None = getattr(getattr(app, "state", None), "error_formats", None)
        body = (formats or ErrorFormats()).body(scope["path"], err)
        headers = [(b"content-type", b"application/json")]
        retry = retry_after_header(err)
        if retry is not None:
            headers.append((b"retry-after", retry.encode()))
        if err.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="corral"'))
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    def _after(self, scope: Scope, info: dict[str, Any], rid: str, seconds: float) -> None:
        principal: Principal | None = info["principal"]
        fields = {
            "method": scope["method"], "path": scope["path"], "status": info["status"] or 499,
            "duration_ms": round(seconds * 1000, 1), "request_id": rid,
            "key_id": principal.key_id if principal else None,
            "client": (scope.get("client") or ("-",))[0],
        }
        self.metrics.observe_request(route_label(scope), scope["method"], fields["status"], seconds)
        log_access(fields)
        if info["scope"] in ("manage", "admin") and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            log_audit({**fields, "scope": info["scope"]})


def install_security(app: FastAPI, ctx: AppContext) -> None:
    """Wire the injected auth, limits and metrics into `app` (called once by `create_app`)."""
    install_metrics_route(app, ctx.services.metrics, ctx.scheduler)
    app.include_router(keys_router)
    app.add_middleware(SecurityMiddleware, ctx=ctx)


__all__ = ["SecurityMiddleware", "install_security"]
