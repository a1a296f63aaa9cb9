"""The batching loop's inbox and admission, on the fake model (tests/fakeloop.py): milliseconds."""

from __future__ import annotations

from corral.engine.llamacpp import slots as sl
from corral.engine.llamacpp.batch import UNLOADED
from corral.engine.llamacpp.loopio import Call, Failure, Generate, Reply, Stop
from corral.errors import BadRequestError
from tests.fakeloop import Driver, Run, expected


def finish_order(d: Driver, runs: list[Run]) -> list[int]:
    order: list[int] = []
    for _ in range(2000):
        order += [r.rid for r in runs if r.finished and r.rid not in order]
        if len(order) == len(runs):
            return order
        d.turn()
    raise AssertionError("not finished")


def test_a_request_waits_while_every_slot_is_busy_then_takes_the_freed_slot() -> None:
    d = Driver(num_parallel=1)
    a, b = d.generate("first prompt", 6), d.generate("second prompt", 6)
    d.turn()
    assert [q.rid for q in d.loop.active.values()] == [a.rid] and [w[0] for w in d.loop.waiting] == [b.rid]
    while not a.finished:
        assert not b.chunks and b.rid not in d.loop.active
        d.turn()
    d.finish(b)
    assert d.out(a) == expected(d.tokens("first prompt"), 6)
    assert d.out(b) == expected(d.tokens("second prompt"), 6)
    assert b.reason == "length" and b.metrics.eval_count == 6


def test_waiting_requests_are_seated_in_arrival_order() -> None:
    d = Driver(num_parallel=1)
    runs = [d.generate(f"prompt number {c}", 3) for c in "abcd"]
    assert finish_order(d, runs) == [r.rid for r in runs]


def test_two_slots_run_two_requests_in_the_same_steps() -> None:
    d = Driver(num_parallel=2, n_batch=64)
    a, b = d.generate("alpha", 5), d.generate("beta", 5)
    d.finish(a, b)
    assert d.turns == 5  # one step per token for both: prompts in the first, no waiting
    assert d.out(a) == expected(d.tokens("alpha"), 5) and d.out(b) == expected(d.tokens("beta"), 5)
    assert {len(d.model.decoded_by(0)), len(d.model.decoded_by(1))} == {6 + 4, 5 + 4}


def test_the_warmest_waiting_prompt_picks_its_slot_first() -> None:
    """A cold prompt that arrived first must not take the slot holding the next turn's history."""
    d = Driver(num_parallel=2, num_ctx=128, n_batch=64)
    first = "the history of a long conversation between two people"
    a = d.generate(first, 4)
    d.finish(a)
    assert d.loop.slots[0].cached  # the conversation sits in slot 0
    history = first + a.text + " and then"
    cold, warm = d.generate("zzz", 3), d.generate(history, 3)
    d.finish(cold, warm)
    held = len(d.tokens(first)) + 3  # its prompt and the three answer tokens decoded
    assert warm.metrics.prompt_cache_count == held
    assert cold.metrics.prompt_cache_count == 0
    assert d.out(warm) == expected(d.tokens(history), 3)


def test_a_cancelled_waiting_request_is_never_seated_and_gets_no_event() -> None:
    d = Driver(num_parallel=1)
    a, b, c = d.generate("one", 4), d.generate("two", 4), d.generate("three", 4)
    d.turn()
    d.cancel(b)
    d.finish(a, c)
    assert not b.chunks and b.failure is None and not d.loop.waiting and not d.loop.active


def test_stop_fails_running_and_waiting_requests_and_refuses_new_ones() -> None:
    d = Driver(num_parallel=1)
    a, b = d.generate("one", 50), d.generate("two", 4)
    d.turn()
    d.loop.submit(Stop())
    late = Run(99)
    d.loop.submit(Generate(late.rid, d.params("three"), late))
    d.turn()
    assert not d.loop.running and not d.loop.active and not d.loop.waiting
    for r in (a, b, late):
        assert r.error == UNLOADED
    assert d.model.held(0) == [] and d.loop.slots[0].cached == [] and not d.loop.slots[0].busy


def test_a_call_runs_on_the_loop_and_a_raising_one_answers_with_its_failure() -> None:
    d = Driver()
    got: list[Reply] = []

    def boom() -> dict[str, object]:
        raise ValueError("boom")

    d.loop.submit(Call(d.loop.status, got.append))
    d.loop.submit(Call(boom, got.append))
    d.turn()
    assert isinstance(got[0], dict) and got[0]["num_ctx"] == 64 and got[0]["waiting"] == 0
    assert isinstance(got[1], Failure) and isinstance(got[1].error, ValueError)


def test_an_over_long_prompt_is_cut_with_truncate_and_refused_without() -> None:
    d = Driver(num_ctx=16)
    long = "abcdefghijklmnopqrstuvwxyz"
    cut, refused = d.generate(long, 2, num_keep=0), d.generate(long, 2, truncate=False, shift=False)
    d.finish(cut, refused)
    assert refused.failure is not None and isinstance(refused.failure.error, BadRequestError)
    assert refused.error == sl.PROMPT_TOO_LONG
    tokens = sl.truncate_prompt(d.tokens(long), 16, 1, shift=True)
    assert cut.metrics.prompt_eval_count == len(tokens) < 16
    assert d.out(cut) == expected(tokens, 2)


def test_an_empty_prompt_is_a_bad_request() -> None:
    d = Driver(add_bos=False)
    r = d.generate("", 2)
    d.turn()
    assert r.failure is not None and isinstance(r.failure.error, BadRequestError) and not d.loop.waiting
