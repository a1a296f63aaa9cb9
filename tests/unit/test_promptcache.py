"""The prompt cache's RAM tier and its slot planning, without llama.cpp (a fake model)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from corral.engine.llamacpp import slots as sl
from corral.engine.llamacpp.promptcache import (
    PromptCache,
    SlotCache,
    common_prefix,
    key_tokens,
    token_key,
)
from tests.kvstate import StateModel


def k(tokens: list[int]) -> bytes:
    return token_key(tokens)


def state(n: int, fill: int = 1) -> bytearray:
    return bytearray([fill]) * n


def test_keys_round_trip_and_common_prefix_matches_a_plain_scan() -> None:
    rng = random.Random(5)
    for _ in range(300):
        a = [rng.randrange(50_000) for _ in range(rng.randrange(0, 80))]
        cut = rng.randrange(0, len(a) + 1)
        b = a[:cut] + [rng.randrange(50_000) for _ in range(rng.randrange(0, 10))]
        assert key_tokens(k(a)) == a
        assert common_prefix(k(a), k(b)) == sl.common_prefix(a, b)


def test_short_states_are_not_stored() -> None:
    cache = PromptCache(1000, min_tokens=8)
    cache.put(k(list(range(7))), state(10))
    assert cache.ram == {} and cache.stats.saves == 0


def test_longest_prefix_wins_within_the_limit() -> None:
    cache = PromptCache(1000, min_tokens=2)
    cache.put(k([1, 2, 3, 4]), state(10))
    cache.put(k([1, 2, 9, 9, 9]), state(10))
    assert cache.best(k([1, 2, 3, 4, 5]), 10) == (4, k([1, 2, 3, 4]))
    assert cache.best(k([1, 2, 3, 4, 5]), 3) == (3, k([1, 2, 3, 4]))  # at most len(prompt)-1 reused
    assert cache.best(k([7, 1, 2]), 10) == (0, None)


def test_ties_go_to_the_most_recently_used_state() -> None:
    cache = PromptCache(1000, min_tokens=2)
    cache.put(k([1, 2, 3, 7]), state(10, 1))
    cache.put(k([1, 2, 3, 8]), state(10, 2))
    assert cache.best(k([1, 2, 3, 5]), 10) == (3, k([1, 2, 3, 8]))
    cache.get(k([1, 2, 3, 7]))  # used: now the most recent
    assert cache.best(k([1, 2, 3, 5]), 10) == (3, k([1, 2, 3, 7]))


def test_an_extended_conversation_supersedes_its_earlier_turn() -> None:
    cache = PromptCache(1000, min_tokens=2)
    cache.put(k([1, 2, 3]), state(10))
    cache.put(k([1, 2, 3, 4, 5]), state(20))
    assert list(cache.ram) == [k([1, 2, 3, 4, 5])] and cache.bytes == 20
    cache.put(k([1, 2, 3, 4]), state(15))  # already held by the longer entry: not stored twice
    assert list(cache.ram) == [k([1, 2, 3, 4, 5])] and cache.bytes == 20


def test_least_recently_used_states_go_first_and_the_bound_holds() -> None:
    cache = PromptCache(100, min_tokens=2)
    for i in range(5):
        cache.put(k([i, i, i]), state(30))
        assert cache.bytes <= 100
    assert list(cache.ram) == [k([2, 2, 2]), k([3, 3, 3]), k([4, 4, 4])]
    cache.get(k([2, 2, 2]))
    cache.put(k([9, 9, 9]), state(30))
    assert list(cache.ram) == [k([4, 4, 4]), k([2, 2, 2]), k([9, 9, 9])]
    assert cache.stats.evictions == 3
    cache.put(k([8, 8, 8]), state(101))  # larger than the whole bound: not kept in memory
    assert k([8, 8, 8]) not in cache.ram and cache.bytes == 90


def test_plan_restores_a_longer_stored_prefix_into_the_coldest_idle_slot() -> None:
    prompt = list(range(100))
    slots = [sl.Slot(0, cached=prompt[:10], last_used=5), sl.Slot(1, cached=[7, 7], last_used=1), sl.Slot(2)]
    plan = sl.plan_slot(slots, prompt, 32, cached=90)
    assert plan == sl.SlotPlan(slot=2, keep=0, restore=90) and plan.reused == 90
    slots[2].cached, slots[2].last_used = [5], 9  # no empty slot: the least recently used one
    assert sl.plan_slot(slots, prompt, 32, cached=90) == sl.SlotPlan(slot=1, keep=0, restore=90)
    # not worth it: the slot's own prefix is almost as long
    assert sl.plan_slot(slots, prompt, 32, cached=40) == sl.SlotPlan(slot=0, keep=10)
    # never the whole prompt: its last token must be evaluated
    assert sl.plan_slot(slots, prompt[:50], 32, cached=120) == sl.SlotPlan(slot=1, keep=0, restore=49)


def test_plan_prefers_a_slot_that_holds_as_much_as_the_cache() -> None:
    prompt = list(range(100))
    slots = [sl.Slot(0, cached=prompt[:80], busy=True), sl.Slot(1)]
    plan = sl.plan_slot(slots, prompt, 32, cached=80)
    assert plan is not None and plan.copy_from == 0 and not plan.restore


def test_warm_waiting_prompts_pick_their_slot_first() -> None:
    warm = [1] * 50 + [2]
    slots = [sl.Slot(0, cached=[1] * 60, last_used=1), sl.Slot(1, cached=[3] * 60, last_used=2)]
    cold = [9] * 40
    assert sl.seat_order([cold, warm], slots, [0, 0]) == [1, 0]
    assert sl.seat_order([cold, [8] * 40], slots, [0, 35]) == [1, 0]  # a stored prefix counts too
    assert sl.seat_order([cold, [8] * 40], slots, [0, 0]) == [0, 1]  # FIFO among equals
    busy = [sl.Slot(0, busy=True), sl.Slot(1, cached=[1] * 60)]
    assert sl.seat_order([cold, warm], busy, [0, 0]) == [0, 1]  # one seat: the first in line keeps it




def slot_cache(**kw: Any) -> tuple[SlotCache, StateModel]:
    model = StateModel()
    return SlotCache(model, PromptCache(10_000, min_tokens=4, **kw)), model  # type: ignore[arg-type]


def test_a_slot_given_away_is_saved_and_restored_elsewhere() -> None:
    cache, model = slot_cache()
    a = list(range(100, 140))
    slot = sl.Slot(0, cached=list(a))
    model.kv[0] = list(a)
    cache.before_seat(slot, sl.SlotPlan(slot=0, keep=2))  # another prompt keeps 2 of its 40 tokens
    assert model.calls == ["save"]
    other = sl.Slot(1, cached=[5, 5])
    prompt = [*a[:30], 1, 2, 3]
    assert cache.best(prompt) == 30
    assert cache.restore(other, prompt) == 30
    assert other.cached == a[:30] and model.kv[1] == a[:30]  # cut to the shared prefix
    assert cache.cache.stats.hits == 1 and cache.cache.stats.tokens_saved == 30


def test_a_slot_that_keeps_its_tokens_is_not_saved() -> None:
    cache, model = slot_cache()
    slot = sl.Slot(0, cached=list(range(40)))
    cache.before_seat(slot, sl.SlotPlan(slot=0, keep=39))
    cache.before_seat(sl.Slot(1, cached=[1, 2]), sl.SlotPlan(slot=1, keep=0))  # too short to matter
    assert model.calls == []


def test_a_state_that_does_not_restore_is_dropped() -> None:
    cache, model = slot_cache()
    tokens = list(range(50))
    cache.cache.put(token_key(tokens), bytearray(token_key(tokens)))
    model.fail_restore = True
    slot = sl.Slot(0, cached=[1])
    assert cache.restore(slot, [*tokens, 7]) == 0
    assert slot.cached == [] and cache.cache.ram == {} and 0 not in model.kv


@pytest.mark.parametrize("n", [0, 3])
def test_nothing_to_restore_leaves_an_empty_slot(n: int) -> None:
    cache, model = slot_cache()
    slot = sl.Slot(0, cached=[1] * n)
    model.kv[0] = [1] * n
    assert cache.restore(slot, list(range(20))) == 0
    assert slot.cached == [] and 0 not in model.kv


def test_slots_are_saved_at_stop_only_for_the_disk_tier() -> None:
    cache, model = slot_cache()
    slots = [sl.Slot(0, cached=list(range(40))), sl.Slot(1, cached=list(range(50, 90)))]
    model.kv = {s.seq_id: list(s.cached) for s in slots}
    cache.save_all(slots)  # memory only: it ends with the runner, nothing to copy
    assert model.calls == []

    class Disk:
        def __init__(self) -> None:
            self.enabled = True
            self.written: list[bytes] = []

        def keys(self) -> list[bytes]:
            return []

        def write(self, key: bytes, data: bytearray) -> None:
            self.written.append(key)

    disk = Disk()
    cache.cache.disk = disk  # type: ignore[assignment]
    cache.save_all(slots)
    assert model.calls == ["save", "save"] and disk.written == [token_key(s.cached) for s in slots]
