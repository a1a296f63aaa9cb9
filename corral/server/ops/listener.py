"""Connection-level hardening for `corral serve`: the uvicorn HTTP protocol with a header deadline.

uvicorn times out idle keep-alive connections but gives a client unlimited time to send request
headers, so a slow-loris client can hold a connection open forever. `deadline_protocol` returns an
h11 protocol class that closes a connection whose request headers have not fully arrived within
`seconds` of the connection opening or the previous response finishing. Request bodies and
response writes are bounded by the security middleware. Uses uvicorn internals (h11_impl).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            waiting_for = self.cycle
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._expire, waiting_for)

        def _expire(self, waiting_for: Any) -> None:
            # Still no new request since the timer was armed: headers are late.
            if self.cycle is waiting_for and not self.transport.is_closing():
                self.transport.close()

        def handle_websocket_upgrade(self, event: Any) -> None:
            # The connection now belongs to the WebSocket protocol: no header deadline any more.
            if self._deadline is not None:
                self._deadline.cancel()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol
