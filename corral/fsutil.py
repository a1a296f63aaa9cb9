"""File-system durability helpers shared by every writer that replaces files atomically (the store,
keys.json): nothing here knows what the files hold."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort on platforms without directory fds)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
