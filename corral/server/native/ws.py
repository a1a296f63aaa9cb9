"""`/api/ws`: many native chat/generate requests over one WebSocket, multiplexed by request id.

Protocol (JSON text messages; README "WebSocket streaming"):

    → {"type": "auth", "key": "crl_..."}            first message, when no Authorization header
    → {"type": "chat", "id": "a", ...ChatRequest}   or "generate" with a GenerateRequest body
    ← {"id": "a", ...native chunk}                  as /api/chat streams them; the last has done: true
    → {"type": "cancel", "id": "a"}                 stops "a" (its runner sequence is freed)
    ← {"id": "a", "error": "...", "status": 499}    a request that failed or was canceled ends so
    ← {"type": "error", "error": "...", "status": 400}   a message that could not be used
    → {"type": "ping"}  ← {"type": "pong"}

The requests run through the same service functions as the HTTP routes (`start_chat`,
`start_generate`: typed chunks, or the rendered prompt for `_debug_render_only`), so validation,
the queue bound, metrics and token accounting are shared.
The security middleware only sees HTTP, so this module applies the same gates itself: the
DNS-rebinding host check and the CORS origin check (a browser page may open a socket to any
origin), the credential (`Authorization`/`x-api-key` header, or the first message), the `infer`
scope and the per-key rate limit (one request per chat/generate message). Closing the socket
cancels everything still running on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect

from corral.auth.authenticator import ANONYMOUS, Principal
from corral.errors import BadRequestError, CorralError, ForbiddenError, RequestCanceledError, UnauthorizedError
from corral.schemas.native import ChatRequest, DebugResponse, GenerateRequest, WireModel
from corral.server.context import AppContext
from corral.server.errors import native_error_body, ws_error_message
from corral.server.native.inference import collect_chat, collect_generate, start_chat, start_generate
from corral.server.ops.bodycheck import check_json_text
from corral.server.ops.metrics import current_key_id
from corral.server.ops.requestlog import log_access, new_request_id, request_id
from corral.server.ops.security import credential_of, header

router = APIRouter()
log = logging.getLogger(__name__)
POLICY_VIOLATION = 1008
SCOPE = "infer"
Chunks = AsyncIterator[WireModel]


@dataclass(frozen=True)
class Kind:
    """One request type: its body, the service function that starts it and the `stream: false` collector."""

    schema: type[BaseModel]
    start: Callable[[AppContext, Any], Awaitable[Chunks | DebugResponse]]
    collect: Callable[[Any], Awaitable[WireModel]]


_KINDS: dict[str, Kind] = {
    "chat": Kind(ChatRequest, start_chat, collect_chat),
    "generate": Kind(GenerateRequest, start_generate, collect_generate),
}


class _Gone(Exception):
    """The socket is closed (or the client stopped reading); nothing more can be sent."""


@router.websocket("/api/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    ctx: AppContext = websocket.app.state.ctx
    token = request_id.set(new_request_id(header(websocket.scope, b"x-request-id")))
    try:
        await Session(ctx, websocket).run()
    finally:
        request_id.reset(token)


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _tagged(rid: Any, item: WireModel) -> str:
    """A chunk as the socket sends it: the request id first, then the chunk's wire fields (its JSON
    written by pydantic, as the NDJSON lines are, spliced after the id)."""
    body = item.__pydantic_serializer__.to_json(item, exclude_none=True, by_alias=True).decode()
    return '{"id":' + json.dumps(rid, ensure_ascii=False) + ("," + body[1:] if body != "{}" else "}")


class Session:
    """One socket: authentication, the receive loop, and one task per running request."""

    def __init__(self, ctx: AppContext, websocket: WebSocket) -> None:
        self.ctx = ctx
        self.ws = websocket
        self.auth = ctx.services.auth
        self.limiter = ctx.services.limiter
        self.tasks: dict[Any, asyncio.Task[None]] = {}
        self.send_lock = asyncio.Lock()
        self.principal: Principal | None = None
        self.closed = False
        self.idle_timeout = ctx.settings.stream_idle_timeout_seconds

    @property
    def rate_key(self) -> str:
        p = self.principal
        if p is not None and p is not ANONYMOUS and p.key_id:
            return p.key_id
        client = self.ws.scope.get("client")
        return f"ip:{client[0]}" if client else "ip:unknown"

    async def run(self) -> None:
        started = time.monotonic()
        if not await self._handshake():
            return
        await self.ws.accept()
        try:
            if self.principal is not None or await self._first_message_auth():
                await self._loop()
        finally:
            self.closed = True
            await self._cancel_all()
            p = self.principal
            log_access({"method": "WEBSOCKET", "path": self.ws.scope["path"], "status": 101,
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                        "request_id": request_id.get(), "key_id": p.key_id if p else None,
                        "client": (self.ws.scope.get("client") or ("-",))[0]})

    # authentication ----------------------------------------------------------------------------
    async def _handshake(self) -> bool:
        """Host/origin checks and header credentials, before the socket is accepted."""
        scope = self.ws.scope
        hosts, cors = self.ctx.hosts, self.ctx.cors
        origin = header(scope, b"origin")
        try:
            if not hosts.allowed(header(scope, b"host")):
                raise ForbiddenError("forbidden: host not allowed")
            if origin and not cors.origin_allowed(origin):
                raise ForbiddenError("forbidden: origin not allowed")
            credential = credential_of(scope)
            if credential is not None or not self.auth.enabled:
                self.principal = self._authorize(credential)
        except CorralError as err:
            await self._deny(err)
            return False
        return True

    def _authorize(self, credential: str | None) -> Principal:
        principal = self.auth.authenticate(credential)
        self.auth.authorize(principal, SCOPE)
        return principal

    async def _deny(self, err: CorralError) -> None:
        """Refuse the handshake with the error as an HTTP response where the server can send one."""
        if "websocket.http.response" in self.ws.scope.get("extensions", {}):
            await self.ws.send_denial_response(JSONResponse(native_error_body(err), status_code=err.status))
        else:
            await self.ws.close(POLICY_VIOLATION, err.message[:120])

    async def _first_message_auth(self) -> bool:
        """Auth is on and no header credential came: the first message must be `auth`."""
        try:
            async with asyncio.timeout(self.ctx.settings.header_timeout_seconds):
                message = await self.ws.receive()
        except TimeoutError:
            message = {"type": "websocket.receive", "text": "{}"}
        if message["type"] == "websocket.disconnect":
            return False
        try:
            data = self._parse(message.get("text"))
            if data.get("type") != "auth":
                raise UnauthorizedError('unauthorized: send {"type": "auth", "key": "<key>"} first, '
                                        "or an Authorization header")
            key = data.get("key")
            self.principal = self._authorize(key if isinstance(key, str) else None)
        except CorralError as err:
            with contextlib.suppress(_Gone):
                await self._send(ws_error_message(err))
            await self._close(POLICY_VIOLATION)
            return False
        return True

    # the receive loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._dispatch(self._parse(message.get("text")))
            except CorralError as err:
                await self._send_quietly(ws_error_message(err))
            except _Gone:
                return
            if self.closed:
                return

    @staticmethod
    def _parse(text: str | None) -> dict[str, Any]:
        if text is None:
            raise BadRequestError("binary messages are not supported; send JSON text")
        check_json_text(text)  # unpaired surrogates and deep nesting, as for HTTP bodies
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadRequestError(f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequestError("a message must be a JSON object")
        return data

    async def _dispatch(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind in _KINDS:
            await self._start(str(kind), data)
        elif kind == "cancel":
            task = self.tasks.get(self._id(data))
            if task is None:
                raise BadRequestError(f"no running request with id {data.get('id')!r}")
            task.cancel()
        elif kind == "ping":
            await self._send({"type": "pong", **({"id": data["id"]} if "id" in data else {})})
        elif kind == "auth":
            raise BadRequestError("already authenticated")
        else:
            raise BadRequestError(f"unknown message type {kind!r}; expected chat, generate, cancel or ping")

    @staticmethod
    def _id(data: dict[str, Any]) -> Any:
        rid = data.get("id")
        if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
            raise BadRequestError("every request needs an id (a non-empty string or an integer)")
        return rid

    async def _start(self, kind: str, data: dict[str, Any]) -> None:
        rid = self._id(data)
        if rid in self.tasks:
            raise BadRequestError(f"a request with id {rid!r} is already running")
        schema = _KINDS[kind].schema
        try:
            if self.limiter.enabled:
                self.limiter.check(self.rate_key)
            body = {k: v for k, v in data.items() if k not in ("type", "id")}
            try:
                request = schema.model_validate(body)
            except ValidationError as exc:
                raise BadRequestError(_validation_text(exc)) from None
        except CorralError as err:
            await self._send(ws_error_message(err, rid))
            return
        task = asyncio.create_task(self._serve(kind, rid, request), name=f"corral-ws-{rid}")
        self.tasks[rid] = task
        task.add_done_callback(lambda t: self.tasks.pop(rid, None) if self.tasks.get(rid) is t else None)

    # one request ---------------------------------------------------------------------------------
    async def _serve(self, kind: str, rid: Any, request: Any) -> None:
        spec = _KINDS[kind]
        token = current_key_id.set(self.rate_key)
        items: Chunks | None = None
        try:
            started = await spec.start(self.ctx, request)
            if isinstance(started, DebugResponse):
                await self._send(_tagged(rid, started))
                return
            items = started
            if request.stream is False:
                await self._send(_tagged(rid, await spec.collect(items)))
            else:
                async for item in items:
                    await self._send(_tagged(rid, item))
        except asyncio.CancelledError:
            await _aclose(items)  # free the runner sequence before saying so
            items = None
            if not self.closed:
                with contextlib.suppress(_Gone):
                    await asyncio.shield(self._send(ws_error_message(RequestCanceledError(), rid)))
            raise
        except _Gone:
            pass
        except CorralError as err:
            await self._send_quietly(ws_error_message(err, rid))
        except Exception as exc:
            log.exception("websocket request %r failed", rid)
            await self._send_quietly(ws_error_message(CorralError(f"internal error: {type(exc).__name__}: {exc}"), rid))
        finally:
            current_key_id.reset(token)
            await _aclose(items)

    async def _send_quietly(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(_Gone):
            await self._send(payload)

    async def _send(self, payload: dict[str, Any] | str) -> None:
        """Send one message (an object, or its JSON text); a client that reads nothing for the idle
        timeout is disconnected."""
        if self.closed:
            raise _Gone()
        try:
            async with self.send_lock, asyncio.timeout(self.idle_timeout):
                await self.ws.send_text(payload if isinstance(payload, str) else _dumps(payload))
        except TimeoutError:
            log.warning("websocket client read nothing for %.0fs; closing", self.idle_timeout)
            await self._close(POLICY_VIOLATION)
            raise _Gone() from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True
            raise _Gone() from None

    async def _close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.ws.close(code)

    async def _cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _aclose(items: AsyncIterator[Any] | None) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


def _validation_text(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    where = ".".join(str(p) for p in errors[0]["loc"])
    return f"{where}: {errors[0]['msg']}" if where else errors[0]["msg"]
