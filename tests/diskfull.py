"""Inject "no space left on device" into the writes of chosen files (by path), for disk-full tests.

`fill_disk(monkeypatch, "sha256-tmp-")` makes every file later opened through `os.fdopen` whose
path contains the marker fail its writes with ENOSPC once `room` bytes went in. Reads and other
files are untouched, so a server running in the test process keeps working.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest


class FullFile:
    """Wraps a writable file object; writes beyond `room` bytes raise ENOSPC."""

    def __init__(self, inner: Any, room: int) -> None:
        self._inner = inner
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return int(self._inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def fill_disk(monkeypatch: pytest.MonkeyPatch, marker: str, room: int = 0) -> list[str]:
    """Patch `os.fdopen`; returns the list of paths that were given a full disk."""
    real = os.fdopen
    hit: list[str] = []

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real(fd, mode, *args, **kwargs)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f
        if marker in path and any(c in mode for c in "wa+"):
            hit.append(path)
            return FullFile(f, room)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return hit
