"""Context shift in the batching loop (spec §9), on the fake model: what stays, what goes, where
the rest moves. The fake's tokens depend on every KV cell, so the output after a shift is only the
expected one when exactly the right cells were dropped and the rest moved down by the right amount.
"""

from __future__ import annotations

import pytest

from corral.engine.llamacpp import slots as sl
from tests.fakeloop import Driver, expected, simulate

NUM_CTX = 32
PROMPT = "a short prompt"  # 15 tokens with the BOS


@pytest.mark.parametrize("num_keep", [0, 4])
def test_generation_continues_past_num_ctx_with_the_kept_head_and_the_tail_moved_down(num_keep: int) -> None:
    d = Driver(num_ctx=NUM_CTX, n_batch=16)
    r = d.generate(PROMPT, 60, num_keep=num_keep)
    d.finish(r)
    keep = sl.keep_count(num_keep, True, NUM_CTX)
    out, cells = simulate(d.tokens(PROMPT), 60, num_ctx=NUM_CTX, keep=keep)
    assert r.reason == "length" and r.metrics.eval_count == 60
    assert d.out(r) == out  # 60 tokens from a 32-token context: at least two shifts
    assert d.model.held(0) == cells and cells[:keep] == d.tokens(PROMPT)[:keep]
    assert d.out(r) != expected(d.tokens(PROMPT), 60, num_ctx=NUM_CTX, keep=keep + 1)  # keep matters


def test_without_shift_generation_stops_with_length_at_num_ctx() -> None:
    d = Driver(num_ctx=NUM_CTX)
    r = d.generate(PROMPT, 60, shift=False)
    d.finish(r)
    n = NUM_CTX - len(d.tokens(PROMPT)) + 1  # every position filled, then the last sample
    assert r.reason == "length" and r.metrics.eval_count == n
    assert d.out(r) == expected(d.tokens(PROMPT), n)
    assert not d.loop.active and not d.loop.slots[0].busy


def test_a_model_that_cannot_shift_stops_with_length_at_num_ctx() -> None:
    d = Driver(num_ctx=NUM_CTX, shift=False)
    r = d.generate(PROMPT, 60)
    d.finish(r)
    assert r.reason == "length" and r.metrics.eval_count == NUM_CTX - len(d.tokens(PROMPT)) + 1


def test_a_shift_in_one_sequence_leaves_the_other_alone() -> None:
    d = Driver(num_ctx=NUM_CTX, num_parallel=2, n_batch=32)
    a, b = d.generate(PROMPT, 40), d.generate("other", 10)
    d.finish(a, b)
    keep = sl.keep_count(4, True, NUM_CTX)
    assert d.out(a) == expected(d.tokens(PROMPT), 40, num_ctx=NUM_CTX, keep=keep)
    assert d.out(b) == expected(d.tokens("other"), 10)
