"""A prompt cache beyond the slots: KV states of conversations whose slot was given to another.

When the batching loop is about to throw away a slot's cached tokens (the slot goes to another
conversation), `SlotCache.save` copies the sequence's KV state (llama.cpp's per-sequence state
save) into `PromptCache`, an LRU store keyed by the token prefix and bounded in bytes. A new
prompt that extends a stored prefix further than any slot does is restored into a free slot
(`SlotCache.restore`) and only the rest is prefilled. With a `DiskTier` (promptdisk.py) every
entry is also written to disk and found again after the runner restarts.

Disk reads stay off the model thread: once the loop sets `SlotCache.wake`, it asks
`SlotCache.pending(tokens, slots)` before seating a prompt whose best state is on disk only; that
starts a background read into memory and says True until the state is there (or the read failed,
or took longer than `read_wait`), and the finished read calls `wake` so that an idle loop looks
again. Restores then only copy from memory. Without `wake` (no loop hook) a restore reads the
disk itself, as it always did.

`PromptCache` is bookkeeping (bytes in, bytes out) shared by the model thread and the reader
thread under one lock; only `SlotCache` touches llama.cpp, through `LlamaModel.seq_state` /
`seq_restore`.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import slots as sl

if TYPE_CHECKING:
    from .loopmodel import LoopModel
    from .model import LlamaModel

log = logging.getLogger(__name__)
MIN_TOKENS = 32  # shorter states are not worth saving or restoring (recomputed in milliseconds)
READ_WAIT_S = 10.0  # a prompt waits at most this long for its state to come back from disk


def token_key(tokens: list[int]) -> bytes:
    """The cache key of a token list: its int32 values in native byte order."""
    a = array("i", tokens)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def key_tokens(key: bytes) -> list[int]:
    a = array("i")
    a.frombytes(key)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def common_prefix(a: bytes, b: bytes) -> int:
    """Tokens two keys share at their start (binary search over C-level comparisons)."""
    n = min(len(a), len(b)) // 4
    if a[: 4 * n] == b[: 4 * n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi], in tokens
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[: 4 * mid] == b[: 4 * mid]:
            lo = mid
        else:
            hi = mid
    return lo


def longest(keys: Iterable[bytes], prompt: bytes, limit: int) -> tuple[int, bytes | None]:
    """The key sharing the longest prefix with `prompt` (at most `limit`); ties go to the last."""
    best, found = 0, None
    for key in keys:
        n = min(common_prefix(key, prompt), limit)
        if n >= best and n > 0:
            best, found = n, key
    return best, found


class Disk(Protocol):
    """What the RAM tier needs from a disk tier (promptdisk.DiskTier)."""

    enabled: bool

    def keys(self) -> list[bytes]: ...

    def data_size(self, key: bytes) -> int | None: ...

    def write(self, key: bytes, data: bytearray) -> None: ...

    def read(self, key: bytes) -> bytearray | None: ...

    def remove(self, key: bytes) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def close(self, timeout: float) -> None: ...


@dataclass
class CacheStats:
    hits: int = 0
    disk_hits: int = 0
    tokens_saved: int = 0
    saves: int = 0
    evictions: int = 0
    disk_waits: int = 0  # background reads started for a waiting prompt
    disk_timeouts: int = 0  # prompts that stopped waiting for a slow read


@dataclass
class Read:
    """A background read of one disk entry: prompts wait for it until `deadline`."""

    deadline: float
    done: bool = False
    gave_up: bool = False
    timer: threading.Timer | None = None


class PromptCache:
    """LRU store of KV states keyed by token prefix, bounded by `max_bytes`.

    An entry whose tokens extend another's supersedes it; an entry that a stored one already
    covers is not stored twice. Entries evicted from memory stay findable on the disk tier.
    The model thread and the disk reader share it under `lock`; the state being read counts
    in the bound (`reserved`). A state read from disk that alone exceeds the bound (a disk-only
    cache, CORRAL_CACHE_RAM=0) is held in `staged`, one at a time, until the restore it was read
    for takes it.
    """

    def __init__(
        self,
        max_bytes: int,
        disk: Disk | None = None,
        *,
        min_tokens: int = MIN_TOKENS,
        read_wait: float = READ_WAIT_S,
    ) -> None:
        self.max_bytes = max(max_bytes, 0)
        self.disk = disk
        self.min_tokens = min_tokens
        self.read_wait = read_wait
        self.lock = threading.RLock()
        self.ram: OrderedDict[bytes, bytearray] = OrderedDict()
        self.bytes = 0
        self.reserved = 0  # bytes of the state the reader is reading now
        self.staged: dict[bytes, bytearray] = {}
        self.reads: dict[bytes, Read] = {}
        self.stats = CacheStats()
        self.wake: Callable[[], None] | None = None  # set by the loop: called when a read ends
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None

    def _disk(self) -> Disk | None:
        return self.disk if self.disk is not None and self.disk.enabled else None

    def best(self, prompt: bytes, limit: int, *, disk: bool = True) -> tuple[int, bytes | None]:
        """The stored key sharing the longest prefix with `prompt` (at most `limit` tokens);
        with `disk=False` only states in memory count.

        Ties go to the most recently used entry (memory before disk): two states of the same
        tokens may differ in low bits (computed in batches of other shapes), and the newest is
        the one a slot that had been kept would hold."""
        with self.lock:
            on_disk = self._on_disk() if disk else []
            return longest((*on_disk, *self.staged, *self.ram), prompt, limit)

    def best_on_disk(self, prompt: bytes, limit: int) -> tuple[int, bytes | None]:
        """Like `best`, among the entries that are on disk only."""
        with self.lock:
            return longest(self._on_disk(), prompt, limit)

    def _on_disk(self) -> list[bytes]:
        disk = self._disk()
        if disk is None:
            return []
        return [k for k in disk.keys() if k not in self.ram and k not in self.staged]

    def covered(self, key: bytes) -> bool:
        """True when a stored entry already holds `key`'s tokens (the key is a prefix of it)."""
        disk = self._disk()
        with self.lock:
            for other in (*self.ram, *(disk.keys() if disk is not None else ())):
                if len(other) >= len(key) and other.startswith(key):
                    if other in self.ram:
                        self.ram.move_to_end(other)
                    return True
        return False

    def put(self, key: bytes, data: bytearray) -> None:
        """Store the state of the tokens in `key` (replacing the entries it extends)."""
        if len(key) // 4 < self.min_tokens or self.covered(key):
            return
        disk = self._disk()
        with self.lock:
            for other in [k for k in self.ram if key.startswith(k)]:
                self._drop(other)
            if disk is not None:
                for other in [k for k in disk.keys() if key.startswith(k)]:
                    disk.remove(other)
                disk.write(key, data)
            self.stats.saves += 1
            self._keep(key, data)

    def _keep(self, key: bytes, data: bytearray) -> bool:
        """Hold `data` in memory as the most recent entry, evicting the oldest beyond the bound
        (which the state being read shares); False when it does not fit at all."""
        if key in self.ram:
            self._drop(key)
        if len(data) + self.reserved > self.max_bytes:
            return False
        self.ram[key] = data
        self.bytes += len(data)
        self._evict()
        return True

    def _evict(self) -> None:
        while self.bytes + self.reserved > self.max_bytes and self.ram:
            self._drop(next(iter(self.ram)))
            self.stats.evictions += 1

    def _drop(self, key: bytes) -> None:
        self.bytes -= len(self.ram.pop(key))

    def take(self, prompt: bytes, limit: int, *, disk: bool) -> tuple[int, bytes | None, bytearray | None]:
        """The best entry for `prompt` with its state when it is in memory (one lookup under the
        lock, so that the reader cannot evict it in between). A staged state is handed over."""
        with self.lock:
            n, key = self.best(prompt, limit, disk=disk)
            if key is None:
                return 0, None, None
            if key in self.staged:
                return n, key, self.staged.pop(key)
            data = self.ram.get(key)
            if data is not None:
                self.ram.move_to_end(key)
            return n, key, data

    def get(self, key: bytes) -> bytearray | None:
        """The state stored under `key` (read from disk here when no longer in memory)."""
        with self.lock:
            data = self.ram.get(key)
            if data is not None:
                self.ram.move_to_end(key)
                return data
        disk = self._disk()
        if disk is None:
            return None
        data = disk.read(key)
        if data is not None:
            with self.lock:
                self.stats.disk_hits += 1
                self._keep(key, data)  # back in memory: the next use needs no disk read
        return data

    def discard(self, key: bytes) -> None:
        """Forget an entry whose state could not be restored."""
        with self.lock:
            if key in self.ram:
                self._drop(key)
            self.staged.pop(key, None)
        if self.disk is not None:
            self.disk.remove(key)

    # --- background reads ---------------------------------------------------------------------
    def prefetch(self, key: bytes) -> bool:
        """Read `key` from disk into memory in the background (once); True while a prompt that
        needs it should wait: the read is in flight and its deadline has not passed."""
        now = time.monotonic()
        with self.lock:
            for k in [k for k, r in self.reads.items() if r.done and r.deadline < now]:
                del self.reads[k]  # a later prompt may read it again
            r = self.reads.get(key)
            if r is None:
                self.reads[key] = r = Read(now + self.read_wait)
                self.stats.disk_waits += 1
                self._start(key, r)
                return True
            if r.done:
                return False
            if now < r.deadline:
                return True
            if not r.gave_up:
                r.gave_up = True
                self.stats.disk_timeouts += 1
                log.warning("prompt cache: a %d-token state is still being read from disk after %.1fs; "
                            "the prompt starts without it", len(key) // 4, self.read_wait)
            return False

    def reading(self) -> bool:
        """True while a background read is in flight."""
        with self.lock:
            return any(not r.done for r in self.reads.values())

    def _start(self, key: bytes, r: Read) -> None:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="prompt-cache-read", daemon=True)
            self._reader.start()
        if self.wake is not None:
            r.timer = threading.Timer(self.read_wait + 0.01, self.wake)  # just past the deadline: look again
            r.timer.daemon = True
            r.timer.start()
        self._queue.put(key)

    def _read_loop(self) -> None:
        while (key := self._queue.get()) is not None:
            try:
                self._read(key)
            except Exception:  # the reader must survive anything
                log.exception("prompt cache: disk read failed")
                self._finish(key, None)

    def _read(self, key: bytes) -> None:
        """Read one entry (reader thread): room is made in the bound first, then the disk is read
        without the lock; a damaged entry is logged and removed by the disk tier."""
        disk = self._disk()
        size = disk.data_size(key) if disk is not None else None
        with self.lock:
            if size is not None and size <= self.max_bytes:
                self.reserved = size
                self._evict()
        data = disk.read(key) if disk is not None and size is not None else None
        self._finish(key, data)

    def _finish(self, key: bytes, data: bytearray | None) -> None:
        with self.lock:
            self.reserved = 0
            if data is not None:
                self.stats.disk_hits += 1
                if not self._keep(key, data):
                    self.staged = {key: data}  # beyond the bound: only until its restore
            r = self.reads.get(key)
            if r is not None:
                r.done = True
                if r.timer is not None:
                    r.timer.cancel()
            wake = self.wake
        if wake is not None:
            wake()

    def status(self) -> dict[str, Any]:
        with self.lock:
            s = self.stats
            out: dict[str, Any] = {
                "entries": len(self.ram),
                "bytes": self.bytes,
                "max_bytes": self.max_bytes,
                "reading_bytes": self.reserved,
                "staged_bytes": sum(len(d) for d in self.staged.values()),
                "hits": s.hits,
                "disk_hits": s.disk_hits,
                "disk_waits": s.disk_waits,
                "disk_timeouts": s.disk_timeouts,
                "tokens_saved": s.tokens_saved,
                "saves": s.saves,
                "evictions": s.evictions,
            }
        if self.disk is not None:
            out["disk"] = self.disk.status()
        return out

    def close(self, timeout: float) -> None:
        if self._reader is not None:
            self._queue.put(None)
            self._reader.join(timeout)
            self._reader = None
        if self.disk is not None:
            self.disk.close(timeout)


class SlotCache:
    """The batching loop's side of the prompt cache: save a slot before it is overwritten,
    restore a stored prefix into a free slot.

    The loop opts into background disk reads by setting `wake` (e.g. to post a no-op into its
    inbox) and by deferring a prompt while `pending(tokens, slots)` is True; from then on `best`
    and `restore` only count states in memory."""

    def __init__(self, model: LoopModel, cache: PromptCache) -> None:
        self.model = model
        self.cache = cache

    @property
    def wake(self) -> Callable[[], None] | None:
        return self.cache.wake

    @wake.setter
    def wake(self, fn: Callable[[], None] | None) -> None:
        self.cache.wake = fn

    def _sync(self) -> bool:
        """Restores may read the disk on this thread (no loop hook): the behaviour before wake."""
        return self.cache.wake is None

    def best(self, tokens: list[int]) -> int:
        """Tokens of `tokens` a restore would provide (0 when nothing worth restoring)."""
        n, _ = self.cache.best(token_key(tokens), max(len(tokens) - 1, 0), disk=self._sync())
        return n if n >= self.cache.min_tokens else 0

    def pending(self, tokens: list[int], slots: Sequence[sl.Slot] = ()) -> bool:
        """True while `tokens`' best stored prefix is being read from disk (the read starts here):
        the loop seats the prompt once it is in memory, or once the read failed or took too long.
        False at once when memory or one of `slots` already holds as much."""
        prompt, limit = token_key(tokens), max(len(tokens) - 1, 0)
        n, key = self.cache.best_on_disk(prompt, limit)
        if key is None or n < self.cache.min_tokens:
            return False
        if n <= self.cache.best(prompt, limit, disk=False)[0]:
            return False
        if any(min(common_prefix(token_key(s.cached), prompt), limit) >= n for s in slots):
            return False
        return self.cache.prefetch(key)

    def reading(self) -> bool:
        """True while a background read is in flight (its end calls `wake`)."""
        return self.cache.reading()

    def save(self, slot: sl.Slot, keep: int = 0) -> None:
        """Store `slot`'s state if it is about to lose more than a few tokens beyond `keep`."""
        if len(slot.cached) - keep < self.cache.min_tokens:
            return
        key = token_key(slot.cached)
        if len(key) // 4 < self.cache.min_tokens or self.cache.covered(key):
            return
        data = self.model.seq_state(slot.seq_id)
        if data:
            self.cache.put(key, data)

    def before_seat(self, slot: sl.Slot, plan: sl.SlotPlan) -> None:
        """Called before the loop applies `plan` to `slot`: keep what the plan throws away."""
        keep = plan.keep if plan.copy_from is None and not plan.restore else 0
        self.save(slot, keep)

    def restore(self, slot: sl.Slot, tokens: list[int]) -> int:
        """Give `slot` the longest stored prefix of `tokens`; returns the tokens it now holds."""
        m = self.model
        m.seq_rm(slot.seq_id)
        slot.cached = []
        n, key, data = self.cache.take(token_key(tokens), max(len(tokens) - 1, 0), disk=self._sync())
        if key is None or n < self.cache.min_tokens:
            return 0
        if data is None and self._sync():
            data = self.cache.get(key)
        if data is None or not m.seq_restore(slot.seq_id, data):
            log.warning("prompt cache: could not restore a %d-token state; dropping it", len(key) // 4)
            self.cache.discard(key)
            m.seq_rm(slot.seq_id)
            return 0
        stored = key_tokens(key)
        if n < len(stored) and not m.seq_rm(slot.seq_id, n, -1):
            m.seq_rm(slot.seq_id)  # a state that cannot be cut (recurrent, sliding window)
            return 0
        slot.cached = stored[:n]
        with self.cache.lock:
            self.cache.stats.hits += 1
            self.cache.stats.tokens_saved += n
        return n

    def save_all(self, slots: list[sl.Slot]) -> None:
        """At stop: keep every slot's state on the disk tier (memory alone dies with the runner)."""
        if self.cache.disk is None or not self.cache.disk.enabled:
            return
        for slot in slots:
            self.save(slot)

    def status(self) -> dict[str, Any]:
        return self.cache.status()

    def close(self, timeout: float) -> None:
        self.cache.close(timeout)


def open_cache(
    model: LlamaModel,
    model_path: str,
    *,
    ram_bytes: int,
    disk_root: str = "",
    disk_max: int = 0,
    options: dict[str, Any] | None = None,
) -> SlotCache | None:
    """The runner's prompt cache (None when both tiers are off). `options` are the load options
    that shape a KV state; with the model digest and the llama.cpp build they tag disk entries."""
    from pathlib import Path

    from .promptdisk import DiskTier, make_tag

    disk = None
    if disk_root:
        disk = DiskTier.open(Path(disk_root), make_tag(Path(model_path), **(options or {})), disk_max)
    if ram_bytes <= 0 and disk is None:
        return None
    return SlotCache(model, PromptCache(ram_bytes, disk))
