"""The disk tier of the prompt cache: KV states that outlive the runner (`CORRAL_CACHE_DISK`).

Every entry the RAM tier stores is also written here by a background thread, one file per token
prefix, so that the next runner of the same model and load options (after an unload, a runner
restart or a server restart) finds it again. Files live in `<root>/<tag hash>/`, where the tag
names everything that shapes a KV state: the model blob digest, the load options (context per
sequence, KV cache type, flash attention, unified KV, adapters) and the llama.cpp build. A file:

    fixed header  magic "CORRALKV", version, tag length, token count, data length,
                  sha256 of everything after the header
    tag           utf-8 JSON, must equal this runner's tag
    tokens        int32 little endian
    data          llama.cpp's per-sequence state

Files are written atomically (fsutil.write_atomic) and checked when indexed (header, tag, size)
and when read (checksum); a damaged or foreign file is logged, removed and never loaded. The
whole directory is kept under `max_bytes`, oldest files (by modification time, touched on each
use) removed first. A full disk (ENOSPC, EDQUOT) turns the tier off with a warning; requests never
fail because of it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as ll

from corral.fsutil import write_atomic

log = logging.getLogger(__name__)
MAGIC = b"CORRALKV"
VERSION = 1
HEADER = struct.Struct("<8sIIIQ32s")
SUFFIX = ".kv"
QUEUE_ITEMS = 64  # pending writes; beyond this a state is not written (it stays in memory)
_BLOB = re.compile(r"sha256-([0-9a-f]{64})")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def model_digest(path: Path) -> str:
    """The blob digest of a model in the store; for a file elsewhere, its path, size and mtime."""
    m = _BLOB.fullmatch(path.name)
    if m:
        return f"sha256:{m.group(1)}"
    st = path.stat()
    ident = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return "file:" + hashlib.sha256(ident.encode()).hexdigest()


def build_version() -> str:
    """The llama.cpp this runner links (bindings version, library version, state format)."""
    raw = ll.llama_version() if hasattr(ll, "llama_version") else b""
    lib = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return f"llama-cpp-python {ll.__version__}; llama {lib}; seq-state {ll.LLAMA_STATE_SEQ_VERSION}"


def make_tag(model_path: Path, **load_options: Any) -> str:
    """The tag of the states a runner produces: equal tags, interchangeable states."""
    fields = {"model": model_digest(model_path), "llama": build_version(), **load_options}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def encode(tag: bytes, key: bytes, data: bytes | bytearray) -> list[bytes | bytearray]:
    h = hashlib.sha256(tag)
    h.update(key)
    h.update(data)
    head = HEADER.pack(MAGIC, VERSION, len(tag), len(key) // 4, len(data), h.digest())
    return [head, tag, key, data]


class Damaged(Exception):
    pass


def read_head(f: Any, tag: bytes, size: int) -> tuple[bytes, int, bytes]:
    """(key, data length, checksum) of an open entry file whose tag must be `tag`."""
    raw = f.read(HEADER.size)
    if len(raw) != HEADER.size:
        raise Damaged("truncated header")
    magic, version, tag_len, n_tokens, data_len, digest = HEADER.unpack(raw)
    if magic != MAGIC or version != VERSION:
        raise Damaged("not a corral prompt-cache file of this version")
    if HEADER.size + tag_len + 4 * n_tokens + data_len != size:
        raise Damaged(f"size {size} does not match its header")
    if f.read(tag_len) != tag:
        raise Damaged("written for another model, load options or llama.cpp build")
    key = f.read(4 * n_tokens)
    return key, int(data_len), bytes(digest)


@dataclass
class DiskEntry:
    path: Path
    size: int


class DiskTier:
    """One runner's view of the disk cache: an index of its tag's files and a writer thread."""

    def __init__(self, root: Path, tag: str, max_bytes: int) -> None:
        self.root = Path(root)
        self.tag = tag.encode()
        self.dir = self.root / hashlib.sha256(self.tag).hexdigest()[:24]
        self.max_bytes = max_bytes
        self.enabled = max_bytes > 0
        self.index: dict[bytes, DiskEntry] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[tuple[str, bytes, bytearray | None] | None] = queue.Queue(QUEUE_ITEMS)
        self.counts = {"written": 0, "damaged": 0, "reads": 0, "dropped": 0}
        self.thread: threading.Thread | None = None

    @classmethod
    def open(cls, root: Path, tag: str, max_bytes: int) -> DiskTier:
        tier = cls(root, tag, max_bytes)
        if tier.enabled:
            try:
                # states hold conversations: only this user may read them (files: mkstemp's 0600)
                tier.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                tier.dir.mkdir(mode=0o700, exist_ok=True)
                tier.scan()
            except OSError as exc:
                log.warning("prompt cache: disk tier %s unusable (%s); off", tier.dir, exc)
                tier.enabled = False
        if tier.enabled:
            tier.thread = threading.Thread(target=tier._run, name="prompt-cache-disk", daemon=True)
            tier.thread.start()
        return tier

    # --- index ------------------------------------------------------------------------------
    def scan(self) -> None:
        """Index this tag's files; remove damaged or foreign ones and leftover temporary files."""
        for path in self.dir.iterdir():
            if path.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()
            elif path.name.endswith(SUFFIX):
                try:
                    size = path.stat().st_size
                    with open(path, "rb") as f:
                        key, _, _ = read_head(f, self.tag, size)
                except Damaged as exc:
                    self._damaged(path, str(exc))
                    continue
                except OSError:
                    continue
                self.index[key] = DiskEntry(path, size)
        if self.index:
            log.info("prompt cache: %d entries on disk in %s", len(self.index), self.dir)

    def _damaged(self, path: Path, why: str) -> None:
        log.warning("prompt cache: removing damaged entry %s: %s", path, why)
        self._count("damaged")
        with contextlib.suppress(OSError):
            path.unlink()

    def _count(self, what: str) -> None:
        with self.lock:  # the model thread, the writer and the prompt cache's reader all count
            self.counts[what] += 1

    def keys(self) -> list[bytes]:
        with self.lock:
            return list(self.index)

    def data_size(self, key: bytes) -> int | None:
        """Bytes of the state stored under `key` (what reading it takes in memory); None if absent."""
        with self.lock:
            entry = self.index.get(key)
        return None if entry is None else entry.size - HEADER.size - len(self.tag) - len(key)

    def path_for(self, key: bytes) -> Path:
        return self.dir / (hashlib.sha256(key).hexdigest()[:40] + SUFFIX)

    # --- model thread (reads: the prompt cache's reader thread) ------------------------------
    def write(self, key: bytes, data: bytearray) -> None:
        """Queue `data` to be written under `key` (skipped when the writer is behind)."""
        if not self.enabled:
            return
        with self.lock:
            if key in self.index:
                return
        try:
            self.queue.put_nowait(("write", key, data))
        except queue.Full:
            self._count("dropped")

    def remove(self, key: bytes) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(("remove", key, None))

    def read(self, key: bytes) -> bytearray | None:
        """The state stored under `key`, checked against its checksum; None if missing or damaged."""
        with self.lock:
            entry = self.index.get(key)
        if entry is None or not self.enabled:
            return None
        try:
            with open(entry.path, "rb") as f:
                got, data_len, digest = read_head(f, self.tag, os.fstat(f.fileno()).st_size)
                data = bytearray(data_len)
                if got != key or f.readinto(data) != data_len:
                    raise Damaged("its tokens or length differ from its index entry")
            h = hashlib.sha256(self.tag)
            h.update(key)
            h.update(data)
            if h.digest() != digest:
                raise Damaged("checksum mismatch")
        except Damaged as exc:
            self._forget(key)
            self._damaged(entry.path, str(exc))
            return None
        except OSError:
            self._forget(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # recently used: last to be swept
        self._count("reads")
        return data

    def _forget(self, key: bytes) -> DiskEntry | None:
        with self.lock:
            return self.index.pop(key, None)

    # --- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            op, key, data = item
            try:
                if op == "write" and data is not None and self.enabled:
                    self._write(key, data)
                elif op == "remove":
                    entry = self._forget(key)
                    if entry is not None:
                        with contextlib.suppress(OSError):
                            entry.path.unlink()
            except Exception:  # the writer must survive anything
                log.exception("prompt cache: disk writer failed")

    def _write(self, key: bytes, data: bytearray) -> None:
        path = self.path_for(key)
        size = HEADER.size + len(self.tag) + len(key) + len(data)
        if size > self.max_bytes:
            return
        try:
            write_atomic(path, encode(self.tag, key, data))
        except OSError as exc:
            if exc.errno in _FULL:
                self.enabled = False
                log.warning("prompt cache: the disk is full (%s); disk tier off until restart", exc)
            else:
                log.warning("prompt cache: could not write %s: %s", path, exc)
            return
        with self.lock:
            self.index[key] = DiskEntry(path, size)
        self._count("written")
        self.sweep()

    def sweep(self) -> None:
        """Remove the oldest files of the whole cache directory (every tag) beyond max_bytes."""
        files: list[tuple[float, int, Path]] = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.endswith(SUFFIX):
                    with contextlib.suppress(OSError):
                        st = f.stat()
                        files.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in files)
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                f.unlink()
            total -= size
            with self.lock:
                for key in [k for k, e in self.index.items() if e.path == f]:
                    del self.index[key]

    def status(self) -> dict[str, Any]:
        with self.lock:
            entries, size = len(self.index), sum(e.size for e in self.index.values())
            counts = dict(self.counts)
        return {"enabled": self.enabled, "entries": entries, "bytes": size, "max_bytes": self.max_bytes, **counts}

    def close(self, timeout: float) -> None:
        """Finish the queued writes (at most `timeout` seconds), then stop the writer."""
        if self.thread is None:
            return
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        self.thread.join(timeout)
        self.thread = None
