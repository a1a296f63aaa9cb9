"""KV pressure, decode failures and cancellation in the batching loop, on the fake model."""

from __future__ import annotations

from tests.fakeloop import Driver, expected

PROMPT = "a prompt of some thirty characters"  # 35 tokens with the BOS


def test_kv_pressure_evicts_an_idle_slots_cache_and_the_step_is_retried() -> None:
    d = Driver(num_parallel=2, n_batch=16, kv_size=60, add_bos=False)
    a = d.generate("x" * 40, 4)
    d.finish(a)
    assert len(d.loop.slots[0].cached) == 43
    b = d.generate("y" * 30, 4)
    d.finish(b)
    assert b.failure is None and d.out(b) == expected(d.tokens("y" * 30), 4)
    assert d.loop.slots[0].cached == [] and d.model.held(0) == []  # the idle history gave way
    assert len(d.model.held(1)) == 33


def test_kv_full_with_no_idle_slot_fails_the_newest_request_and_the_other_goes_on() -> None:
    d = Driver(num_parallel=2, n_batch=64, kv_size=50, add_bos=False)
    a, b = d.generate("p" * 20, 25), d.generate("q" * 20, 25)
    d.finish(a, b)
    assert b.error == "the KV cache is full: no room for this request's tokens"
    assert a.failure is None and d.out(a) == expected(d.tokens("p" * 20), 25)
    assert d.model.held(1) == [] and not d.loop.slots[1].busy


def test_a_failed_decode_fails_the_sequences_in_it_and_the_next_request_runs() -> None:
    d = Driver(num_parallel=1)
    a, b = d.generate(PROMPT, 8), d.generate("next", 3)
    d.turn()
    d.model.fail_codes.append(-3)
    d.finish(a, b)
    assert a.error == "llama_decode failed with status -3"
    assert d.out(b) == expected(d.tokens("next"), 3)
    assert b.metrics.prompt_cache_count == 0  # nothing of a's failed sequence was reused


def test_cancel_frees_the_slot_for_the_waiting_request_and_the_cancelled_one_hears_nothing() -> None:
    d = Driver(num_parallel=1)
    a, b = d.generate(PROMPT, 50), d.generate("waiting", 3)
    d.until(lambda: len(a.chunks) >= 3)
    d.cancel(a)
    heard = len(a.chunks)
    d.turn()
    assert b.rid in d.loop.active and a.rid not in d.loop.active
    d.finish(b)
    assert len(a.chunks) == heard and not a.finished
    assert d.out(b) == expected(d.tokens("waiting"), 3)


def test_a_cancelled_request_keeps_its_kv_so_the_same_prompt_decodes_only_its_last_token() -> None:
    """Issue 13: Open WebUI's stop-then-regenerate must not recompute the whole prompt."""
    d = Driver(num_parallel=1, num_ctx=128)
    a = d.generate(PROMPT, 50)
    d.until(lambda: len(a.chunks) >= 5)
    d.cancel(a)
    d.turn()
    tokens = d.tokens(PROMPT)
    assert d.loop.slots[0].cached == tokens + d.out(a)[:4]  # the prompt and the decoded answer
    before = len(d.model.decoded)
    again = d.generate(PROMPT, 5)
    d.finish(again)
    assert again.metrics.prompt_cache_count == len(tokens) - 1
    assert d.model.decoded[before][1:] == (len(tokens) - 1, tokens[-1])
    assert len(d.model.decoded) - before == 1 + 4
    assert d.out(again) == expected(tokens, 5) == d.out(a)[:5]


def test_a_request_cancelled_during_its_prefill_keeps_the_part_decoded() -> None:
    d = Driver(num_parallel=1, num_ctx=128, n_batch=16)
    a = d.generate(PROMPT, 5)
    d.turn()
    d.cancel(a)
    d.turn()
    assert d.loop.slots[0].cached == d.tokens(PROMPT)[:16] and not a.chunks
    again = d.generate(PROMPT, 5)
    d.finish(again)
    assert again.metrics.prompt_cache_count == 16
    assert d.out(again) == expected(d.tokens(PROMPT), 5)


def test_a_cancel_on_a_model_that_cannot_cut_a_sequence_drops_it_whole() -> None:
    d = Driver(num_parallel=1, partial_rm=False)
    a = d.generate(PROMPT, 50)
    d.until(lambda: len(a.chunks) >= 2)
    d.cancel(a)
    d.turn()
    assert d.loop.slots[0].cached == [] and d.model.held(0) == []


def test_a_cancel_drops_cells_beyond_what_was_verified() -> None:
    """Cells past `cached` (a draft decoded by a step that then failed) go with the cancel."""
    d = Driver(num_parallel=1, num_ctx=128)
    a = d.generate(PROMPT, 50)
    d.until(lambda: len(a.chunks) >= 2)
    n = len(d.loop.slots[0].cached)
    d.model.cells[0][n] = 5  # a stray cell, as an unverified draft leaves
    d.cancel(a)
    d.loop.turn()
    assert d.model.held(0) == d.loop.slots[0].cached and len(d.loop.slots[0].cached) == n
