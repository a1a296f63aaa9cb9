"""IP allow-lists: `allow_from`, per-route `allow_from_routes`, and trusted proxies.

The outermost middleware, so a client outside the lists gets a 403 before authentication, rate
limits or body reads run. The rule for a path is the longest matching prefix of
`allow_from_routes`, else `allow_from`; no rule (or an empty list) lets everyone through.
The client address is the socket peer, unless the peer is a trusted proxy: then
`X-Forwarded-For` is read right to left, skipping trusted proxies, and the first other address
is the client (a client cannot forge its way past a proxy that appends). That address replaces
`scope["client"]`, so the rate limiter, logs and metrics downstream see the real client.
A refused WebSocket handshake is closed before it is accepted (the server answers 403).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable, Mapping

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.config import Settings
from corral.errors import ForbiddenError
from corral.server.errors import ErrorFormats
from corral.server.ops.security import route_label

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def parse_address(text: str) -> Address | None:
    """An IP address (IPv4-mapped IPv6 as IPv4; a zone id dropped), or None if not one."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: Address | None, nets: tuple[Network, ...]) -> bool:
    return addr is not None and any(addr.version == net.version and addr in net for net in nets)


class AllowPolicy:
    """Pure decisions over addresses and paths; the middleware applies them."""

    def __init__(self, allow_from: Iterable[str] = (), routes: Mapping[str, Iterable[str]] | None = None,
                 trusted_proxies: Iterable[str] = ()) -> None:
        self.allow_from = networks(allow_from)
        self.routes = sorted(((p, networks(n)) for p, n in (routes or {}).items()),
                             key=lambda item: len(item[0]), reverse=True)
        self.trusted = networks(trusted_proxies)

    @classmethod
    def from_settings(cls, s: Settings) -> AllowPolicy:
        return cls(s.allow_from, s.allow_from_routes, s.trusted_proxies)

    @property
    def active(self) -> bool:
        return bool(self.allow_from or self.routes or self.trusted)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the peer, or the first untrusted hop of X-Forwarded-For."""
        current = peer
        if not forwarded_for or not _within(parse_address(peer), self.trusted):
            return current
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            current = hop
            if not _within(parse_address(hop), self.trusted):
                break
        return current

    def rule_for(self, path: str) -> tuple[Network, ...]:
        for prefix, nets in self.routes:
            if path.startswith(prefix):
                return nets
        return self.allow_from

    def permits(self, path: str, address: str) -> bool:
        rule = self.rule_for(path)
        return not rule or _within(parse_address(address), rule)


def _forwarded_for(scope: Scope) -> str | None:
    values = [bytes(v).decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
    return ",".join(values) if values else None


class AllowListMiddleware:
    def __init__(self, app: ASGIApp, policy: AllowPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        address = self.policy.client_address(str(client[0]), _forwarded_for(scope))
        if address != client[0]:
            scope = {**scope, "client": (address, client[1])}
        if self.policy.permits(scope["path"], address):
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s from %s (allow-list)", scope.get("method", "WEBSOCKET"), scope["path"], address)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self._refuse_http(scope, send)

    @staticmethod
    async def _refuse_http(scope: Scope, send: Send) -> None:
        started = time.monotonic()
        app = scope.get("app")
        formats: ErrorFormats = getattr(getattr(app, "state", None), "error_formats", None) or ErrorFormats()
        err = ForbiddenError("forbidden: client address not allowed")
        body = json.dumps(formats.body(scope["path"], err)).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        ctx = getattr(getattr(app, "state", None), "ctx", None)
        if ctx is not None:
            ctx.services.metrics.observe_request(route_label(scope), scope["method"], 403, time.monotonic() - started)


def install_allowlist(app: FastAPI, settings: Settings) -> None:
    """Add the middleware outermost (after every other `add_middleware`), when configured."""
    policy = AllowPolicy.from_settings(settings)
    if policy.active:
        app.add_middleware(AllowListMiddleware, policy=policy)
