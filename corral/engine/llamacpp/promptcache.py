"""A prompt cache beyond the slots: KV states of conversations whose slot was given to another.

When the batching loop is about to throw away a slot's cached tokens (the slot goes to another
conversation), `SlotCache.save` copies the sequence's KV state (llama.cpp's per-sequence state
save) into `PromptCache`, an LRU store keyed by the token prefix and bounded in bytes. A new
prompt that extends a stored prefix further than any slot does is restored into a free slot
(`SlotCache.restore`) and only the rest is prefilled. With a `DiskTier` (promptdisk.py) every
entry is also written to disk and found again after the runner restarts.

`PromptCache` is pure bookkeeping (bytes in, bytes out) and runs on the model thread; only
`SlotCache` touches llama.cpp, through `LlamaModel.seq_state` / `seq_restore`.
"""

from __future__ import annotations

import logging
import sys
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import slots as sl

if TYPE_CHECKING:
    from .loopmodel import LoopModel
    from .model import LlamaModel

log = logging.getLogger(__name__)
MIN_TOKENS = 32  # shorter states are not worth saving or restoring (recomputed in milliseconds)


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


class Disk(Protocol):
    """What the RAM tier needs from a disk tier (promptdisk.DiskTier)."""

    enabled: bool

    def keys(self) -> list[bytes]: ...

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


class PromptCache:
    """LRU store of KV states keyed by token prefix, bounded by `max_bytes` (model thread only).

    An entry whose tokens extend another's supersedes it; an entry that a stored one already
    covers is not stored twice. Entries evicted from memory stay findable on the disk tier.
    """

    def __init__(self, max_bytes: int, disk: Disk | None = None, *, min_tokens: int = MIN_TOKENS) -> None:
        self.max_bytes = max(max_bytes, 0)
        self.disk = disk
        self.min_tokens = min_tokens
        self.ram: OrderedDict[bytes, bytearray] = OrderedDict()
        self.bytes = 0
        self.stats = CacheStats()

    def _disk(self) -> Disk | None:
        return self.disk if self.disk is not None and self.disk.enabled else None

    def best(self, prompt: bytes, limit: int) -> tuple[int, bytes | None]:
        """The stored key sharing the longest prefix with `prompt` (at most `limit` tokens).

        Ties go to the most recently used entry (memory before disk): two states of the same
        tokens may differ in low bits (computed in batches of other shapes), and the newest is
        the one a slot that had been kept would hold."""
        best, found = 0, None
        disk = self._disk()
        on_disk = [k for k in disk.keys() if k not in self.ram] if disk is not None else []
        for key in (*on_disk, *self.ram):
            n = min(common_prefix(key, prompt), limit)
            if n >= best and n > 0:
                best, found = n, key
        return best, found

    def covered(self, key: bytes) -> bool:
        """True when a stored entry already holds `key`'s tokens (the key is a prefix of it)."""
        disk = self._disk()
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
        for other in [k for k in self.ram if key.startswith(k)]:
            self._drop(other)
        if disk is not None:
            for other in [k for k in disk.keys() if key.startswith(k)]:
                disk.remove(other)
            disk.write(key, data)
        self.stats.saves += 1
        self._keep(key, data)

    def _keep(self, key: bytes, data: bytearray) -> None:
        """Hold `data` in memory as the most recent entry, evicting the oldest beyond the bound."""
        if len(data) > self.max_bytes:
            return
        self.ram[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.ram)))
            self.stats.evictions += 1

    def _drop(self, key: bytes) -> None:
        self.bytes -= len(self.ram.pop(key))

    def get(self, key: bytes) -> bytearray | None:
        """The state stored under `key` (from disk when no longer in memory); None if gone."""
        data = self.ram.get(key)
        if data is not None:
            self.ram.move_to_end(key)
            return data
        disk = self._disk()
        if disk is None:
            return None
        data = disk.read(key)
        if data is not None:
            self.stats.disk_hits += 1
            self._keep(key, data)  # back in memory: the next use needs no disk read
        return data

    def discard(self, key: bytes) -> None:
        """Forget an entry whose state could not be restored."""
        if key in self.ram:
            self._drop(key)
        if self.disk is not None:
            self.disk.remove(key)

    def status(self) -> dict[str, Any]:
        s = self.stats
        out: dict[str, Any] = {
            "entries": len(self.ram),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": s.hits,
            "disk_hits": s.disk_hits,
            "tokens_saved": s.tokens_saved,
            "saves": s.saves,
            "evictions": s.evictions,
        }
        if self.disk is not None:
            out["disk"] = self.disk.status()
        return out

    def close(self, timeout: float) -> None:
        if self.disk is not None:
            self.disk.close(timeout)


class SlotCache:
    """The batching loop's side of the prompt cache: save a slot before it is overwritten,
    restore a stored prefix into a free slot."""

    def __init__(self, model: LoopModel, cache: PromptCache) -> None:
        self.model = model
        self.cache = cache

    def best(self, tokens: list[int]) -> int:
        """Tokens of `tokens` a restore would provide (0 when nothing worth restoring)."""
        n, _ = self.cache.best(token_key(tokens), max(len(tokens) - 1, 0))
        return n if n >= self.cache.min_tokens else 0

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
        n, key = self.cache.best(token_key(tokens), max(len(tokens) - 1, 0))
        if key is None or n < self.cache.min_tokens:
            return 0
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
