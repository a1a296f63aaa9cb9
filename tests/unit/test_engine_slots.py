"""Slot selection (longest common prefix, shared-prefix copies) and context arithmetic (no model)."""

from __future__ import annotations

import pytest

from corral.engine.llamacpp.slots import (
    PROMPT_TOO_LONG,
    Slot,
    common_prefix,
    keep_count,
    plan_slot,
    shift_discard,
    truncate_prompt,
)
from corral.errors import BadRequestError


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6, 7]) == 2


def test_idle_slot_with_longest_prefix_wins() -> None:
    slots = [Slot(0, [9, 9], last_used=1), Slot(1, [1, 2, 3, 4], last_used=5), Slot(2, [1, 2], last_used=0)]
    plan = plan_slot(slots, [1, 2, 3, 4, 5, 6])
    assert plan is not None and plan.slot == 1 and plan.keep == 4 and plan.copy_from is None


def test_full_prompt_cached_reevaluates_last_token() -> None:
    plan = plan_slot([Slot(0, [1, 2, 3])], [1, 2, 3])
    assert plan is not None and plan.keep == 2


def test_no_prefix_takes_empty_then_lru_slot() -> None:
    slots = [Slot(0, [7], last_used=1), Slot(1, [], last_used=9), Slot(2, [8], last_used=0)]
    plan = plan_slot(slots, [1, 2])
    assert plan is not None and plan.slot == 1
    slots[1].cached = [6]
    plan = plan_slot(slots, [1, 2])
    assert plan is not None and plan.slot == 2


def test_busy_slot_prefix_is_copied() -> None:
    slots = [Slot(0, [1, 2, 3, 4, 5], busy=True), Slot(1, [1, 2], last_used=3)]
    plan = plan_slot(slots, [1, 2, 3, 4, 9])
    assert plan is not None
    assert plan.slot == 1 and plan.copy_from == 0 and plan.copy_len == 4 and plan.reused == 4


def test_all_busy_returns_none() -> None:
    assert plan_slot([Slot(0, busy=True)], [1]) is None


def test_truncate_keeps_head_and_tail() -> None:
    tokens = list(range(100))
    out = truncate_prompt(tokens, num_ctx=32, keep=5, shift=True)
    assert len(out) == 32 - max((32 - 5) // 2, 1) == 19
    assert out[:5] == [0, 1, 2, 3, 4] and out[-1] == 99 and out[5] == 100 - 14


def test_short_prompt_unchanged_and_no_shift_raises() -> None:
    assert truncate_prompt([1, 2, 3], num_ctx=4, keep=1, shift=False) == [1, 2, 3]
    with pytest.raises(BadRequestError) as e:
        truncate_prompt(list(range(10)), num_ctx=4, keep=1, shift=False)
    assert e.value.message == PROMPT_TOO_LONG


def test_keep_and_shift_arithmetic() -> None:
    assert keep_count(4, True, 2048) == 5
    assert keep_count(4, False, 2048) == 4
    assert keep_count(5000, True, 100) == 99
    assert shift_discard(2048, 5) == 1021
    assert shift_discard(2, 1) == 1


def test_a_copy_must_save_at_least_min_copy_gain_tokens() -> None:
    slots = [Slot(0, list(range(40)), busy=True), Slot(1, [0, 1, 2], last_used=3)]
    small = plan_slot(slots, [*range(5), 99], min_copy_gain=32)  # donor would save only 2 tokens
    assert small is not None and small.copy_from is None and small.keep == 3
    big = plan_slot(slots, [*range(40), 99], min_copy_gain=32)  # donor saves 37
    assert big is not None and big.copy_from == 0 and big.copy_len == 40
