"""File-system durability helpers shared by every writer that replaces files atomically (the store,
keys.json): nothing here knows what the files hold."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort on platforms without directory fds)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, parts: Iterable[bytes | bytearray | memoryview]) -> None:
    """Write `parts` to `path` all or nothing: a temporary file beside it (`<name>.<random>.tmp`),
    fsync, rename, fsync of the directory. On any error the temporary file is removed and the
    error (ENOSPC included) raised; `path` is then untouched."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
