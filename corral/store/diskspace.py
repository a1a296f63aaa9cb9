"""The one translation of "disk full" into a user-facing error, used by every writer.

Blob writes (uploads through `/api/blobs` and `/v2/`, creates, bundled imports), manifest writes
(create, copy, pull) and registry downloads all end here when the disk or a quota fills up:
`InsufficientStorageError` (507) naming what was being written, where, and how much space is
left. Writers clean up their temp files themselves; this module only words the error.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corral.errors import InsufficientStorageError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DEFAULT_HINT = "free some space and try again"


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError meaning "no space left on device" or "disk quota exceeded"."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def disk_full_error(path: Path, action: str, hint: str = DEFAULT_HINT) -> InsufficientStorageError:
    """`no space left on device while <action> <path> (<free> free); <hint>`."""
    free = free_bytes(path)
    left = f" ({human_bytes(free)} free)" if free is not None else ""
    return InsufficientStorageError(f"no space left on device while {action} {path}{left}; {hint}")


@contextmanager
def disk_full_guard(path: Path, action: str, hint: str = DEFAULT_HINT) -> Iterator[None]:
    """Re-raise ENOSPC/EDQUOT from the block as `disk_full_error(path, action, hint)`."""
    try:
        yield
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, action, hint) from e
        raise
