"""Spec §1 browser defences: the DNS-rebinding host check and CORS origins.

`HostPolicy` mirrors Ollama's `allowedHostsMiddleware`: when the server listens on loopback, a
`Host` that is not a loopback/private/unspecified IP, a local interface address, `localhost`, the
machine's hostname or a `*.localhost|*.local|*.internal` name is refused (403). `CorsPolicy`
mirrors the gin-contrib/cors setup: default local origins plus `CORRAL_ORIGINS` (wildcards
allowed), the spec's allowed headers, 403 for a disallowed `Origin`. Pure functions over headers;
the middleware applies them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
ALLOWED_HEADERS = ("Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
                   "x-stainless-*", "x-api-key", "anthropic-version", "anthropic-beta", "X-Request-Id")
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(p) for p in pattern.lower().split("*")) + "$")


def local_addresses() -> frozenset[str]:
    """IP addresses of this machine's interfaces (best effort)."""
    out: set[str] = set()
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    out.add(a.address.split("%")[0].lower())
    except Exception:  # psutil missing or the platform refuses: only the static rules apply
        pass
    return frozenset(out)


def split_host(host: str) -> str:
    """Host header without its port or IPv6 brackets, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class HostPolicy:
    def __init__(self, *, loopback: bool, hostname: str | None = None,
                 interfaces: Iterable[str] | None = None) -> None:
        self.loopback = loopback
        self.hostname = (hostname if hostname is not None else socket.gethostname()).lower()
        self.interfaces = frozenset(interfaces) if interfaces is not None else local_addresses()

    def allowed(self, host_header: str | None) -> bool:
        if not self.loopback:
            return True
        host = split_host(host_header or "")
        if host in ("", "localhost") or host == self.hostname or host.endswith(_LOCAL_SUFFIXES):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return ip.is_loopback or ip.is_private or ip.is_unspecified or host in self.interfaces


class CorsPolicy:
    def __init__(self, extra_origins: Iterable[str] = ()) -> None:
        origins = [*DEFAULT_ORIGINS, *extra_origins]
        self.allow_all = "*" in origins
        self._patterns = [_wildcard(o) for o in origins if o != "*"]
        self._header_patterns = [_wildcard(h) for h in ALLOWED_HEADERS]

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().lower()
        return self.allow_all or any(p.match(origin) for p in self._patterns)

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        value = "*" if self.allow_all else origin
        headers = [(b"access-control-allow-origin", value.encode("latin-1")),
                   (b"access-control-expose-headers", b"X-Request-Id, Retry-After")]
        if not self.allow_all:
            headers.append((b"vary", b"Origin"))
        return headers

    def preflight_headers(self, requested: str | None) -> list[tuple[bytes, bytes]]:
        names = [h for h in ALLOWED_HEADERS if "*" not in h]
        for item in (requested or "").split(","):
            item = item.strip()
            if item and item.lower() not in {n.lower() for n in names} and any(
                p.match(item.lower()) for p in self._header_patterns
            ):
                names.append(item)
        return [(b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                (b"access-control-allow-headers", ", ".join(names).encode("latin-1")),
                (b"access-control-max-age", b"43200")]
