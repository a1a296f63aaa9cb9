"""The prompt cache's disk tier read in the background: the model thread never waits on the disk.

A fake model (sequence -> tokens) and a fake disk whose reads block until the test releases them
stand in for llama.cpp and the file system; one test uses the real disk tier (a damaged file).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.engine.llamacpp import promptdisk as pd
from corral.engine.llamacpp import slots as sl
from corral.engine.llamacpp.promptcache import PromptCache, SlotCache, token_key
from tests.kvstate import StateModel

WAIT = 30.0  # generous bound for "it eventually happens" on a loaded machine
CONV = list(range(100, 160))  # a 60-token conversation whose state is on disk
PROMPT = [*CONV, 1, 2]  # its next turn




class SlowDisk:
    """A disk tier whose reads block until `release` is set; records the threads that read."""

    def __init__(self, *convs: list[int]) -> None:
        self.enabled = True
        self.entries = {token_key(c): bytes(token_key(c)) for c in convs}
        self.release = threading.Event()
        self.started = threading.Event()
        self.readers: list[threading.Thread] = []

    def keys(self) -> list[bytes]:
        return list(self.entries)

    def data_size(self, key: bytes) -> int | None:
        data = self.entries.get(key)
        return None if data is None else len(data)

    def write(self, key: bytes, data: bytearray) -> None:
        pass

    def read(self, key: bytes) -> bytearray | None:
        self.readers.append(threading.current_thread())
        self.started.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the test never released the read")
        data = self.entries.get(key)
        return None if data is None else bytearray(data)

    def remove(self, key: bytes) -> None:
        self.entries.pop(key, None)

    def status(self) -> dict[str, Any]:
        return {}

    def close(self, timeout: float) -> None:
        pass


def make(disk: Any, max_bytes: int = 10_000, **kw: Any) -> tuple[SlotCache, StateModel, threading.Event]:
    """A SlotCache in the loop's mode (wake set) and the event its wake-ups set."""
    model = StateModel()
    cache = SlotCache(model, PromptCache(max_bytes, disk, min_tokens=4, **kw))  # type: ignore[arg-type]
    woke = threading.Event()
    cache.wake = woke.set
    return cache, model, woke


def idle_slots() -> list[sl.Slot]:
    return [sl.Slot(0), sl.Slot(1)]


def test_the_loop_thread_goes_on_while_a_state_is_read_from_disk() -> None:
    disk = SlowDisk(CONV)
    cache, model, woke = make(disk)
    slots = idle_slots()
    t0 = time.monotonic()
    assert cache.pending(PROMPT, slots) is True  # the read starts: the prompt waits
    assert disk.started.wait(WAIT)
    assert cache.pending(PROMPT, slots) is True and cache.reading()  # still reading: one read only
    # meanwhile the loop serves others: a slot saved to memory and restored, lookups answered
    other = list(range(500, 540))
    model.kv[1], slots[1].cached = list(other), list(other)
    cache.before_seat(slots[1], sl.SlotPlan(slot=1, keep=0))
    assert cache.best([*other, 9]) == 40 and cache.restore(slots[0], [*other, 9]) == 40
    assert cache.best(PROMPT) == 0  # not in memory yet: nothing to plan a restore on
    assert cache.restore(slots[1], PROMPT) == 0 and model.calls == ["save", "restore"]  # nothing to restore
    assert time.monotonic() - t0 < WAIT / 2 and not woke.is_set()
    disk.release.set()
    assert woke.wait(WAIT)  # the finished read wakes the loop
    assert cache.pending(PROMPT, slots) is False and not cache.reading()
    assert cache.best(PROMPT) == 60
    assert cache.restore(slots[1], PROMPT) == 60 and model.kv[1] == CONV and slots[1].cached == CONV
    assert len(disk.readers) == 1 and disk.readers[0] is not threading.current_thread()
    status = cache.status()
    assert status["disk_hits"] == 1 and status["disk_waits"] == 1 and status["disk_timeouts"] == 0
    cache.close(5)


def test_a_state_as_good_in_memory_or_in_a_slot_is_never_waited_for() -> None:
    disk = SlowDisk(CONV)
    cache, _, _ = make(disk)
    longer = [*CONV, 5]  # shares as many tokens with PROMPT as the disk entry
    cache.cache.put(token_key(longer), bytearray(token_key(longer)))
    disk.entries[token_key(CONV)] = bytes(token_key(CONV))  # (put removed the entry it extends)
    assert cache.pending(PROMPT, idle_slots()) is False
    cache.cache.discard(token_key(longer))
    disk.entries[token_key(CONV)] = bytes(token_key(CONV))
    held = [sl.Slot(0, cached=[*CONV, 3], busy=True), sl.Slot(1)]
    assert cache.pending(PROMPT, held) is False  # a slot holds it: copied, not read
    assert cache.pending(list(range(900, 960)), idle_slots()) is False  # nothing stored for it
    assert not disk.started.is_set() and cache.status()["disk_waits"] == 0
    cache.close(5)


def test_a_damaged_entry_read_in_the_background_is_dropped_and_the_prompt_goes_cold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tag = pd.make_tag(Path("/store/blobs/sha256-" + "a" * 64), num_ctx=1024)
    writer = pd.DiskTier.open(tmp_path, tag, 1 << 30)
    writer.write(token_key(CONV), bytearray(token_key(CONV)))
    writer.close(WAIT)
    (path,) = tmp_path.rglob("*.kv")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01  # one flipped bit in the state: the header still indexes it
    path.write_bytes(bytes(raw))
    cache, model, woke = make(pd.DiskTier.open(tmp_path, tag, 1 << 30))
    slot = sl.Slot(0)
    with caplog.at_level(logging.WARNING):
        assert cache.pending(PROMPT, [slot]) is True
        assert woke.wait(WAIT)
    assert "checksum" in caplog.text and not path.exists()
    assert cache.pending(PROMPT, [slot]) is False  # gone: nothing to wait for
    assert cache.best(PROMPT) == 0 and cache.restore(slot, PROMPT) == 0 and slot.cached == []
    assert "restore" not in model.calls
    status = cache.status()
    assert status["disk_hits"] == 0 and status["disk"]["damaged"] == 1 and status["disk"]["entries"] == 0
    cache.close(5)


def test_a_read_slower_than_the_bound_lets_the_prompt_start_cold() -> None:
    disk = SlowDisk(CONV)
    cache, model, woke = make(disk, read_wait=0.3)
    slot = sl.Slot(0)
    assert cache.pending(PROMPT, [slot]) is True
    assert woke.wait(WAIT)  # at the deadline the loop is woken even though the read goes on
    woke.clear()
    assert cache.pending(PROMPT, [slot]) is False and cache.reading()
    assert cache.best(PROMPT) == 0 and cache.restore(slot, PROMPT) == 0  # cold, and no disk read here
    assert len(disk.readers) == 1 and disk.readers[0] is not threading.current_thread()
    assert cache.status()["disk_timeouts"] == 1
    disk.release.set()
    assert woke.wait(WAIT)  # the late read still lands in memory, for the next turn
    assert cache.best(PROMPT) == 60 and cache.pending(PROMPT, [slot]) is False
    assert "restore" not in model.calls
    cache.close(5)


def test_the_bound_holds_with_a_state_being_read() -> None:
    conv = list(range(100, 115))  # 60 bytes of state
    disk = SlowDisk(conv)
    cache, _, woke = make(disk, max_bytes=100)
    pc = cache.cache
    olds = [[i] * 10 for i in range(3)]
    for tokens in olds:
        pc.put(token_key(tokens), bytearray(30))
    assert pc.bytes == 90
    assert cache.pending([*conv, 1], [sl.Slot(0)]) is True
    assert disk.started.wait(WAIT)
    s = cache.status()
    assert s["reading_bytes"] == 60 and s["bytes"] + s["reading_bytes"] <= 100  # room made first
    assert list(pc.ram) == [token_key(olds[2])]  # the least recently used went
    pc.put(token_key(list(range(700, 720))), bytearray(30))  # a save while the read is running
    s = cache.status()
    assert s["bytes"] + s["reading_bytes"] <= 100 and s["bytes"] == 30
    pc.put(token_key(list(range(800, 820))), bytearray(50))  # cannot fit beside the read: not kept
    assert pc.bytes + pc.reserved <= 100
    disk.release.set()
    assert woke.wait(WAIT)
    s = cache.status()
    assert s["reading_bytes"] == 0 and s["bytes"] <= 100 and token_key(conv) in pc.ram
    assert pc.bytes == sum(len(d) for d in pc.ram.values())
    cache.close(5)


def test_a_disk_only_cache_stages_one_state_for_its_restore() -> None:
    disk = SlowDisk(CONV)
    disk.release.set()
    cache, model, woke = make(disk, max_bytes=0)  # CORRAL_CACHE_RAM=0 with a disk tier
    slot = sl.Slot(0)
    assert cache.pending(PROMPT, [slot]) is True
    assert woke.wait(WAIT)
    assert cache.pending(PROMPT, [slot]) is False
    s = cache.status()
    assert s["bytes"] == 0 and s["staged_bytes"] == 240 and cache.best(PROMPT) == 60
    assert cache.restore(slot, PROMPT) == 60 and model.kv[0] == CONV
    assert cache.status()["staged_bytes"] == 0 and cache.best(PROMPT) == 0  # handed over, not kept
    cache.close(5)


def test_without_the_loop_hook_a_restore_still_reads_the_disk_itself() -> None:
    disk = SlowDisk(CONV)
    disk.release.set()
    model = StateModel()
    cache = SlotCache(model, PromptCache(10_000, disk, min_tokens=4))  # type: ignore[arg-type]
    assert cache.best(PROMPT) == 60  # planning counts the disk: restore reads it on this thread
    assert cache.restore(sl.Slot(0), PROMPT) == 60 and disk.readers == [threading.current_thread()]
    cache.close(5)


def test_reads_landing_while_the_loop_saves_keep_the_accounting_exact() -> None:
    convs = [list(range(1000 * i, 1000 * i + 20)) for i in range(1, 41)]
    disk = SlowDisk(*convs)
    disk.release.set()
    cache, _, _ = make(disk, max_bytes=400, read_wait=WAIT)
    ended = threading.Semaphore(0)
    cache.wake = ended.release
    pc = cache.cache
    for i, conv in enumerate(convs):
        cache.pending([*conv, 1], [])
        pc.put(token_key(list(range(100_000 + 50 * i, 100_000 + 50 * i + 10))), bytearray(40))
        cache.best([*conv, 1])
        with pc.lock:
            assert pc.bytes + pc.reserved <= 400
    for _ in convs:
        assert ended.acquire(timeout=WAIT)  # every read ended (each wakes the loop once)
    assert not cache.reading()
    assert pc.bytes == sum(len(d) for d in pc.ram.values()) <= 400 and pc.reserved == 0
    assert pc.stats.disk_hits == len(disk.readers) == len(convs)
    cache.close(5)
