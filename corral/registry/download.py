"""Resumable, parallel, shared blob downloads (spec §6 partial files, §7 blob download).

Owns `blobs/sha256-<hex>-partial` (the sparse, pre-sized data file) and its
`-partial-<N>` JSON part states `{"N","Offset","Size","Completed"}`, the ranged part fetches
(retried with backoff), digest verification of the finished file and its rename into place,
and the process-wide table that lets concurrent pulls of one digest share one download
(`active_download` finds a running one; `readable_end` and `subscribe` let a pull-through mirror
serve bytes while they arrive). Does not know about manifests or progress messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from corral.errors import CorralError, DigestMismatchError
from corral.fsutil import fsync_dir
from corral.registry.client import RegistryClient, RetryableError
from corral.store.blobs import BlobStore, blob_name
from corral.store.diskspace import disk_full_error, is_disk_full

log = logging.getLogger(__name__)
MIN_PART = 100 * 1000 * 1000
MAX_PART = 1000 * 1000 * 1000
MAX_PARTS = 16
_ACTIVE: dict[str, BlobDownload] = {}
_ACTIVE_LOCK = threading.Lock()


@dataclass
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    def to_json(self) -> dict[str, int]:
        return {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}


def plan_parts(total: int, min_part: int = MIN_PART, max_part: int = MAX_PART) -> list[Part]:
    """size/16 clamped to [min_part, max_part] (Ollama's numDownloadParts sizing)."""
    size = max(min_part, min(max_part, total // MAX_PARTS))
    size = max(size, 1)
    parts: list[Part] = []
    offset = 0
    while offset < total:
        n = min(size, total - offset)
        parts.append(Part(len(parts), offset, n))
        offset += n
    return parts


@dataclass(frozen=True)
class DownloadTuning:
    concurrency: int = MAX_PARTS
    min_part: int = MIN_PART
    max_part: int = MAX_PART
    save_every: int = 1 << 20


class BlobDownload:
    """One blob being downloaded into `blobs/`; `run()` once, `wait()` from any thread."""

    def __init__(self, blobs: BlobStore, digest: str, size: int, tuning: DownloadTuning) -> None:
        self.blobs = blobs
        self.digest = digest
        self.total = size
        self.tuning = tuning
        self.partial = blobs.root / (blob_name(digest) + "-partial")
        self.parts: list[Part] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.resumed_bytes = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def completed(self) -> int:
        with self._lock:
            return sum(p.completed for p in self.parts)

    def readable_end(self, offset: int) -> int:
        """The end of the bytes already written contiguously from `offset` (== offset: none yet).

        Each part fills from its start, so `[offset, end)` inside one part is final data; the
        blob's digest is checked only once every part is complete (`done` and no `error`).
        """
        with self._lock:
            for p in self.parts:
                if p.offset <= offset < p.offset + p.size:
                    return max(offset, p.offset + p.completed)
        return offset

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from a download thread) whenever bytes arrive and when the download ends."""
        with self._lock:
            self._listeners.append(listener)
        if self.done.is_set():
            listener()

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    # Partial state ---------------------------------------------------------------------------
    def _state_path(self, n: int) -> Path:
        return Path(f"{self.partial}-{n}")

    def _load_or_plan(self) -> None:
        planned = plan_parts(self.total, self.tuning.min_part, self.tuning.max_part)
        loaded: list[Part] = []
        if self.partial.exists() and self.partial.stat().st_size == self.total:
            for p in planned:
                try:
                    st = json.loads(self._state_path(p.n).read_text())
                    part = Part(int(st["N"]), int(st["Offset"]), int(st["Size"]), int(st["Completed"]))
                except (OSError, ValueError, KeyError, TypeError):
                    break
                if 0 <= part.completed <= part.size and part.offset + part.size <= self.total:
                    loaded.append(part)
                else:
                    break
            if loaded and sum(p.size for p in loaded) != self.total:
                loaded = []
        if loaded:
            self.parts = loaded
            self.resumed_bytes = sum(p.completed for p in loaded)
            log.info("resuming %s at %d/%d bytes", self.digest, self.resumed_bytes, self.total)
            return
        self._remove_partials()
        self.blobs.ensure_dir()
        with open(self.partial, "wb") as f:
            f.truncate(self.total)
        self.parts = planned
        for p in planned:
            self._save(p)

    def _save(self, part: Part) -> None:
        path = self._state_path(part.n)
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(part.to_json()))
        os.replace(tmp, path)

    def _remove_partials(self) -> None:
        for fname in self.blobs.list_names():
            if fname.startswith(self.partial.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.blobs.root / fname)

    # Fetching --------------------------------------------------------------------------------
    def run(self, client: RegistryClient) -> None:
        try:
            self._load_or_plan()
            url = client.direct_url(self.digest) if any(p.completed < p.size for p in self.parts) else ""
            fd = os.open(self.partial, os.O_WRONLY)
            try:
                with ThreadPoolExecutor(max_workers=max(1, self.tuning.concurrency)) as pool:
                    futures = [pool.submit(self._fetch_part, client, url, fd, p) for p in self.parts]
                    for fut in futures:
                        fut.result()
            finally:
                os.close(fd)
            self._verify_and_commit()
        except BaseException as e:  # handed to every waiter
            self.error = _disk_error(e, self.partial)
        finally:
            self.done.set()
            self._notify()

    def _fetch_part(self, client: RegistryClient, url: str, fd: int, part: Part) -> None:
        policy = client.opts.retry
        attempt = 0
        while part.completed < part.size:
            try:
                self._stream_range(client, url, fd, part)
            except RetryableError as e:
                attempt += 1
                if attempt >= policy.attempts:
                    raise CorralError(f"download {self.digest[:19]} part {part.n}: {e.message}") from e
                log.info("part %d: %s; retrying", part.n, e.message)
                policy.sleep(attempt - 1)

    def _stream_range(self, client: RegistryClient, url: str, fd: int, part: Part) -> None:
        start, end = part.offset + part.completed, part.offset + part.size - 1
        resp = client.send("GET", url, headers={"Range": f"bytes={start}-{end}"}, stream=True)
        try:
            if resp.status_code == 200 and start == 0 and end == self.total - 1:
                pass
            elif resp.status_code != 206:
                raise CorralError(f"download {self.digest}: registry returned {resp.status_code} for a range")
            unsaved = 0
            try:
                for chunk in resp.iter_raw():
                    room = part.size - part.completed
                    if len(chunk) > room:
                        raise CorralError(f"download {self.digest}: registry sent more bytes than requested")
                    os.pwrite(fd, chunk, part.offset + part.completed)
                    with self._lock:
                        part.completed += len(chunk)
                    self._notify()
                    unsaved += len(chunk)
                    if unsaved >= self.tuning.save_every:
                        self._save(part)
                        unsaved = 0
            except httpx.TransportError as e:
                raise RetryableError(f"connection lost: {e or type(e).__name__}") from e
            finally:
                self._save(part)
            if part.completed < part.size:
                raise RetryableError("unexpected end of data")
        finally:
            resp.close()

    def _verify_and_commit(self) -> None:
        h = hashlib.sha256()
        with open(self.partial, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        got = "sha256:" + h.hexdigest()
        if got != self.digest:
            self._remove_partials()
            raise DigestMismatchError(f"digest mismatch, want {self.digest}, got {got}")
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(self.partial, 0o644)
        os.replace(self.partial, self.blobs.path(self.digest))
        fsync_dir(self.blobs.root)
        self._remove_partials()


def _disk_error(e: BaseException, path: Path) -> BaseException:
    if is_disk_full(e):
        return disk_full_error(
            path, "downloading", "free some space and pull again (the partial download is kept and resumes)"
        )
    return e


def active_download(blobs: BlobStore, digest: str) -> BlobDownload | None:
    """The download of `digest` into this store that is running now, if any."""
    with _ACTIVE_LOCK:
        dl = _ACTIVE.get(str(blobs.path(digest).resolve()))
    return dl if dl is not None and not dl.done.is_set() else None


def shared_download(
    blobs: BlobStore,
    digest: str,
    size: int,
    tuning: DownloadTuning,
    start: Callable[[BlobDownload], None],
) -> tuple[BlobDownload, bool]:
    """The running download of `digest` in this store, or a new one begun via `start`.

    Returns (download, started_here). The entry leaves the table when the download ends.
    """
    key = str(blobs.path(digest).resolve())
    with _ACTIVE_LOCK:
        existing = _ACTIVE.get(key)
        if existing is not None and not existing.done.is_set():
            return existing, False
        dl = BlobDownload(blobs, digest, size, tuning)
        _ACTIVE[key] = dl

    def runner() -> None:
        try:
            start(dl)
        finally:
            with _ACTIVE_LOCK:
                if _ACTIVE.get(key) is dl:
                    del _ACTIVE[key]

    threading.Thread(target=runner, name=f"corral-dl-{digest[7:19]}", daemon=True).start()
    return dl, True
