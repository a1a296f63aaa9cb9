"""Turning safetensors directories and F16/F32/BF16 GGUFs into model blobs: the store side of
`corral.convert` (used by create and by the bundled imports).

Owns the work files of a conversion (temp files named like abandoned blob writes, so a crash
leaves only what start-up cleaning removes), the progress statuses Ollama's create reports
(`converting model`, `verifying conversion`, `quantizing F16 model to Q4_K_M` with its pseudo
digest), and moving the finished GGUF into `blobs/` hashed in place (no second copy of a
multi-gigabyte file). Uploaded files are presented to the converter as a directory of symlinks
to their blobs, named as the client named them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.convert import Conversion, check_loads, plan_conversion, quantize
from corral.errors import BadRequestError
from corral.fsutil import fsync_dir
from corral.schemas.native import ProgressResponse
from corral.store.blobs import CHUNK, TEMP_PREFIX, normalize_digest, touch
from corral.store.diskspace import disk_full_guard
from corral.store.store import Store

QUANTIZE_PROGRESS = "0000000000000000000"  # Ollama's pseudo digest for the quantizing bar
CONVERT_PROGRESS = "0000000000000000001"  # ours for the converting bar (a different bar)

Pin = Callable[[str], None]


@dataclass(frozen=True)
class NewBlob:
    digest: str
    size: int
    created: bool  # False: an identical blob was already in the store


@contextlib.contextmanager
def source_dir(store: Store, files: dict[str, str], pin: Pin) -> Iterator[Path]:
    """A temporary directory of symlinks `name -> blob`, the uploaded blobs pinned."""
    with tempfile.TemporaryDirectory(prefix="corral-convert-") as tmp:
        root = Path(tmp)
        with store.lock:
            for name, digest in files.items():
                blob = store.blobs.path(digest)
                if not blob.is_file():
                    raise BadRequestError(f"blob {normalize_digest(digest)} not found")
                pin(digest)
                link = root / name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(blob)
        yield root


@contextlib.contextmanager
def work_file(store: Store) -> Iterator[Path]:
    """A path in `blobs/` for an intermediate GGUF; removed on the way out unless adopted."""
    store.blobs.ensure_dir()
    path = store.blobs.root / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def adopt(store: Store, path: Path, pin: Pin) -> NewBlob:
    """Move a finished work file into `blobs/` under its digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())
    digest, size = "sha256:" + h.hexdigest(), path.stat().st_size
    with store.lock:
        final = store.blobs.path(digest)
        created = not final.exists()
        if created:
            os.chmod(path, 0o644)
            os.replace(path, final)
            fsync_dir(store.blobs.root)
        else:
            touch(final)
        pin(digest)
    return NewBlob(digest, size, created)


def _write(plan: Conversion, out: Path) -> Iterator[ProgressResponse]:
    total = plan.total_bytes
    yield ProgressResponse(status="converting model", digest=CONVERT_PROGRESS, total=total, completed=0)
    with disk_full_guard(out, "converting model to"):
        for done in plan.write(out):
            yield ProgressResponse(status="converting model", digest=CONVERT_PROGRESS, total=total, completed=done)


def quantize_file(src: Path, dst: Path, from_type: str, level: str) -> Iterator[ProgressResponse]:
    """Quantize `src` into `dst`, reporting Ollama's `quantizing <FROM> model to <TO>` bar."""
    total = src.stat().st_size
    status = f"quantizing {from_type} model to {level}"
    yield ProgressResponse(status=status, digest=QUANTIZE_PROGRESS, total=total, completed=0)
    with disk_full_guard(dst, "quantizing model to"):
        for fraction in quantize(src, dst, level):
            done = int(total * fraction)
            yield ProgressResponse(status=status, digest=QUANTIZE_PROGRESS, total=total, completed=done)
    yield ProgressResponse(status=status, digest=QUANTIZE_PROGRESS, total=total, completed=total)


def convert_model(
    store: Store, src: Path, pin: Pin, *, level: str | None = None
) -> Generator[ProgressResponse, None, tuple[NewBlob, Conversion]]:
    """Convert the model in `src` (and quantize it to `level`) into a blob.

    Everything that can be checked without writing is checked before the first status, so a bad
    model is an error before any progress and leaves nothing in the store.
    """
    plan = plan_conversion(src)
    with work_file(store) as converted, work_file(store) as quantized:
        yield from _write(plan, converted)
        yield ProgressResponse(status="verifying conversion")
        check_loads(converted)
        final = converted
        if level is not None:
            yield from quantize_file(converted, quantized, plan.file_type_name, level)
            final = quantized
        blob = adopt(store, final, pin)
    return blob, plan


def quantize_blob(
    store: Store, digest: str, from_type: str, level: str, pin: Pin
) -> Generator[ProgressResponse, None, NewBlob]:
    """Quantize the GGUF blob `digest` into a new blob."""
    with work_file(store) as out:
        yield from quantize_file(store.blobs.path(digest), out, from_type, level)
        return adopt(store, out, pin)


# Bundled models shipped as safetensors ---------------------------------------------------------
_CONVERTED: dict[tuple[tuple[str, int, int], ...], str] = {}  # source files' stat -> GGUF digest


def _source_key(src: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(
        (str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in sorted(src.rglob("*")) if p.is_file()
    )


def _pulling(digest: str, size: int) -> ProgressResponse:
    return ProgressResponse(status=f"pulling {digest[7:19]}", digest=digest, total=size, completed=size)


def import_converted(store: Store, src: Path, pin: Pin) -> Generator[ProgressResponse, None, str]:
    """Convert a shipped safetensors model into a blob (once per process and source: a later
    import finds the blob by the remembered digest); returns its digest."""
    key = _source_key(src)
    digest = _CONVERTED.get(key)
    if digest is not None:
        with store.lock:
            present = store.blobs.exists(digest)
            if present:
                pin(digest)
        if present:
            yield _pulling(digest, store.blobs.size(digest))
            return digest
    blob, _plan = yield from convert_model(store, src, pin)
    _CONVERTED[key] = blob.digest
    yield _pulling(blob.digest, blob.size)
    return blob.digest
