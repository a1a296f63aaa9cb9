"""Content-addressed blob files: `<models>/blobs/sha256-<hex>` (spec §6, "Blobs").

Owns digest validation, blob paths and atomic, verified writes. A blob is written to a temp file
in the same directory (named `sha256-tmp-<random>`: not a valid digest name, so both our pruner
and Ollama's treat a stale one as removable), hashed while written, fsynced and renamed into
place. A digest mismatch, an abort or a full disk (`InsufficientStorageError`, worded by
`corral.store.diskspace`) leaves nothing behind. Does not know about manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from corral.errors import BadRequestError, CorralError, DigestMismatchError
from corral.fsutil import fsync_dir
from corral.store.diskspace import disk_full_error, is_disk_full

DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
BLOB_NAME_RE = re.compile(r"^sha256-[0-9a-fA-F]{64}$")
TEMP_PREFIX = "sha256-tmp-"
CHUNK = 1 << 20


def normalize_digest(digest: str) -> str:
    """Return `sha256:<lower hex>`; BadRequestError("invalid digest format") otherwise."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise BadRequestError("invalid digest format")
    return "sha256:" + digest[7:].lower()


def blob_name(digest: str) -> str:
    """The file name of a digest's blob: `sha256-<hex>`."""
    return normalize_digest(digest).replace(":", "-", 1)


class BlobWriter:
    """Streams bytes into a temp blob; `commit()` verifies, then renames it into place.

    Use as a context manager: leaving the block without `commit()` (or with an exception)
    removes the temp file. `created` tells whether commit added a new blob or found it present.
    A disk-full error in `write` or `commit` removes the temp file and raises
    `InsufficientStorageError`. `suspend()` closes the file between bursts of writes (a
    chunked upload holds no descriptor between requests); the next `write` reopens it.
    `checkpoint()`/`rollback()` undo writes that must not count (a failed upload chunk).
    """

    def __init__(self, store: BlobStore, expected_digest: str | None = None) -> None:
        self._store = store
        self._expected = normalize_digest(expected_digest) if expected_digest else None
        store.ensure_dir()
        self.temp_path = store.root / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        self._file: BinaryIO | None = None
        self._finished = False
        with self._disk_full():
            fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.created = False
        self.digest: str | None = None

    @contextlib.contextmanager
    def _disk_full(self) -> Iterator[None]:
        """On ENOSPC/EDQUOT: remove the temp file and raise the one disk-full error."""
        try:
            yield
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.abort()
            raise disk_full_error(self.temp_path, "writing blob") from e

    def _open(self) -> BinaryIO:
        if self._finished:
            raise RuntimeError("blob writer is closed")
        if self._file is None:
            try:
                fd = os.open(self.temp_path, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:
                self._finished = True
                raise CorralError(f"temporary blob {self.temp_path.name} was removed") from None
            self._file = os.fdopen(fd, "ab")
        return self._file

    def write(self, data: bytes) -> int:
        with self._disk_full():
            self._open().write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def suspend(self) -> None:
        """Flush and close the file; the next `write` reopens it."""
        if self._file is not None:
            f, self._file = self._file, None
            with self._disk_full():
                f.close()

    def checkpoint(self) -> tuple[int, Any]:
        """The current size and hash state, for `rollback`."""
        return self.size, self._hash.copy()

    def rollback(self, point: tuple[int, Any]) -> None:
        """Forget every byte written since `checkpoint()` returned `point`."""
        size, state = point
        self.suspend()
        os.truncate(self.temp_path, size)
        self.size, self._hash = size, state.copy()

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Verify against the expected digest and move the blob into place.

        `expected_digest` (when the digest is only known at the end) overrides the one given
        at construction.
        """
        if expected_digest is not None:
            self._expected = normalize_digest(expected_digest)
        with self._disk_full():
            f = self._open()
            self._file, self._finished = None, True
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()
        digest = "sha256:" + self._hash.hexdigest()
        if self._expected is not None and digest != self._expected:
            self._remove_temp()
            raise DigestMismatchError(f'digest mismatch, expected "{self._expected}", got "{digest}"')
        final = self._store.path(digest)
        if final.exists():
            self._remove_temp()
            touch(final)
        else:
            os.chmod(self.temp_path, 0o644)
            os.replace(self.temp_path, final)
            fsync_dir(self._store.root)
            self.created = True
        self.digest = digest
        return digest, self.size

    def abort(self) -> None:
        self._finished = True
        if self._file is not None:
            f, self._file = self._file, None
            with contextlib.suppress(OSError):
                f.close()
        self._remove_temp()

    def _remove_temp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.digest is None:
            self.abort()


def touch(path: Path) -> None:
    """Refresh a blob's mtime (Ollama's touchLayer), so a reused blob is not pruned."""
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(path, (now, now))


class BlobStore:
    """The `blobs/` directory of a model store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure_dir(self) -> None:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """`blobs/sha256-<hex>` for a valid digest (never anything outside `blobs/`)."""
        return self.root / blob_name(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def writer(self, expected_digest: str | None = None) -> BlobWriter:
        return BlobWriter(self, expected_digest)

    def add_bytes(self, data: bytes, expected_digest: str | None = None) -> tuple[str, int]:
        with self.writer(expected_digest) as w:
            w.write(data)
            return w.commit()

    def add_stream(self, chunks: Iterable[bytes], expected_digest: str | None = None) -> tuple[str, int]:
        with self.writer(expected_digest) as w:
            for chunk in chunks:
                w.write(chunk)
            return w.commit()

    def add_file(self, path: Path, expected_digest: str | None = None) -> tuple[str, int]:
        """Hash and copy a local file into the store (streamed, 1 MiB chunks)."""
        return self.add_files_concat([path], expected_digest)

    def add_files_concat(self, paths: list[Path], expected_digest: str | None = None) -> tuple[str, int]:
        """Store the concatenation of `paths` as one blob, without assembling a temp copy."""
        return self.add_stream(read_chunks(paths), expected_digest)

    def remove_stale_temps(self, cutoff: float) -> int:
        """Remove `sha256-tmp-*` files (abandoned writes) last modified before `cutoff`."""
        removed = 0
        for fname in self.list_names():
            if not fname.startswith(TEMP_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.root / fname).st_mtime < cutoff:
                    os.unlink(self.root / fname)
                    removed += 1
        return removed

    def list_names(self) -> list[str]:
        """File names in `blobs/` (valid blobs, temp files and partials alike)."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_file())
        except FileNotFoundError:
            return []


def read_chunks(paths: Iterable[Path], chunk_size: int = CHUNK) -> Iterable[bytes]:
    """Yield the bytes of `paths`, in order, in chunks of at most `chunk_size`."""
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk
