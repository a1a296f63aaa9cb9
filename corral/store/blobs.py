"""Content-addressed blob files: `<models>/blobs/sha256-<hex>` (spec §6, "Blobs").

Owns digest validation, blob paths and atomic, verified writes. A blob is written to a temp file
in the same directory (named `sha256-tmp-<random>`: not a valid digest name, so both our pruner
and Ollama's treat a stale one as removable), hashed while written, fsynced and renamed into
place. A digest mismatch or an abort leaves nothing behind. Does not know about manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from corral.errors import BadRequestError, DigestMismatchError

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


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort on platforms without directory fds)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BlobWriter:
    """Streams bytes into a temp blob; `commit()` verifies, then renames it into place.

    Use as a context manager: leaving the block without `commit()` (or with an exception)
    removes the temp file. `created` tells whether commit added a new blob or found it present.
    """

    def __init__(self, store: BlobStore, expected_digest: str | None = None) -> None:
        self._store = store
        self._expected = normalize_digest(expected_digest) if expected_digest else None
        store.ensure_dir()
        self.temp_path = store.root / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.created = False
        self.digest: str | None = None

    def write(self, data: bytes) -> int:
        if self._file is None:
            raise RuntimeError("blob writer is closed")
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> tuple[str, int]:
        """Verify against the expected digest and move the blob into place."""
        if self._file is None:
            raise RuntimeError("blob writer is closed")
        f, self._file = self._file, None
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
        if self._file is not None:
            self._file.close()
            self._file = None
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
