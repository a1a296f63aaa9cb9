"""Blob upload sessions of corral's `/v2/` registry routes (OCI distribution push, spec §7).

A `POST .../blobs/uploads/` opens a session: a `BlobWriter` whose temp file stays in `blobs/`
but whose file descriptor is closed between requests (`BlobWriter.suspend`), so abandoned
sessions cannot exhaust descriptors. Sessions idle longer than `idle_timeout` are aborted
(temp file removed) by a timer on the event loop and on every session operation; at most
`max_sessions` are open at once. `clean_leftovers` removes temp files a previous server left.
Every method runs on the event loop thread; `Content-Range` parsing lives here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from corral.errors import BadRequestError, CorralError
from corral.store.blobs import BlobStore, BlobWriter

DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_MAX_SESSIONS = 64
_RANGE_RE = re.compile(r"^([0-9]+)-([0-9]+)$")


class RangeNotSatisfiableError(CorralError):
    """A chunk that does not start where the upload ends (OCI: 416)."""

    status = 416


class TooManyUploadsError(CorralError):
    status = 429


def parse_content_range(value: str, size: int) -> tuple[int, int]:
    """`<start>-<end>` (inclusive) of a chunk appended at offset `size`.

    Malformed text is a BadRequestError (400); a range that does not start at `size` or ends
    before it starts is a RangeNotSatisfiableError (416), as the OCI distribution spec says.
    """
    m = _RANGE_RE.fullmatch(value.strip())
    if m is None:
        raise BadRequestError(f'invalid Content-Range "{value}": want "<start>-<end>"')
    start, end = int(m.group(1)), int(m.group(2))
    if start != size or end < start:
        raise RangeNotSatisfiableError(f"chunk {start}-{end} does not continue the upload at offset {size}")
    return start, end


@dataclass
class UploadSession:
    id: str
    writer: BlobWriter
    last_used: float
    busy: bool = False


class UploadSessions:
    """The open upload sessions of one server."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.blobs = blobs
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, UploadSession] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def clean_leftovers(self) -> int:
        """Remove temp blobs untouched for longer than the idle timeout (a previous run's)."""
        return self.blobs.remove_stale_temps(time.time() - self.idle_timeout)

    def open(self) -> UploadSession:
        """A new session with an empty, closed temp file; TooManyUploadsError beyond the cap."""
        self.expire()
        if len(self._sessions) >= self.max_sessions:
            raise TooManyUploadsError(
                f"too many blob uploads in progress ({self.max_sessions}): finish or cancel one"
                f" (DELETE its Location), or retry after idle uploads expire"
                f" ({self.idle_timeout:g}s without a request)"
            )
        writer = self.blobs.writer()
        writer.suspend()
        session = UploadSession(secrets.token_hex(16), writer, self._clock())
        self._sessions[session.id] = session
        self._arm_timer()
        return session

    @contextlib.contextmanager
    def use(self, upload_id: str) -> Iterator[UploadSession | None]:
        """The session (marked busy for the block), or None if unknown or expired.

        RangeNotSatisfiableError if another request is writing to it right now.
        """
        self.expire()
        session = self._sessions.get(upload_id)
        if session is None:
            yield None
            return
        if session.busy:
            raise RangeNotSatisfiableError("another request is writing to this upload")
        session.busy = True
        try:
            yield session
        finally:
            session.busy = False
            session.last_used = self._clock()
            self._arm_timer()

    def discard(self, upload_id: str) -> bool:
        """Abort a session and remove its temp file; False if there was none."""
        session = self._sessions.pop(upload_id, None)
        if session is None:
            return False
        session.writer.abort()
        return True

    def detach(self, session: UploadSession) -> None:
        """Forget a session whose writer the caller now owns (the final PUT)."""
        self._sessions.pop(session.id, None)

    def expire(self) -> int:
        """Abort sessions idle for longer than the timeout; returns how many."""
        now = self._clock()
        stale = [
            s.id for s in self._sessions.values()
            if not s.busy and now - s.last_used >= self.idle_timeout
        ]
        for upload_id in stale:
            self.discard(upload_id)
        return len(stale)

    def close(self) -> None:
        """Abort every session (server shutdown)."""
        for upload_id in list(self._sessions):
            self.discard(upload_id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm_timer(self) -> None:
        if self._timer is not None or not self._sessions:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used outside a server (a unit test): expiry on each call only
            return
        idle = [s.last_used for s in self._sessions.values() if not s.busy]
        delay = self.idle_timeout
        if idle:
            delay = min(max(min(idle) + self.idle_timeout - self._clock(), 0.05), self.idle_timeout)
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire()
        self._arm_timer()
