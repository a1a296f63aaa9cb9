"""The batching loop with the prompt cache's disk tier read in the background (fake model, fake
slow disk): other sequences decode while a waiting prompt's state is read, an idle loop sleeps on
its inbox until the read ends, and a read slower than the bound lets the prompt start cold."""

from __future__ import annotations

import threading

from corral.engine.llamacpp import slots as sl
from corral.engine.llamacpp.loopio import Generate, Stop
from corral.engine.llamacpp.promptcache import PromptCache, SlotCache, token_key
from tests.fakeloop import Driver, Run, expected
from tests.unit.test_promptcache_prefetch import WAIT, SlowDisk

A = "a long conversation about mountains and fjords"
A2 = A + " and then more"


def state_of_a() -> tuple[list[int], bytes]:
    d = Driver(num_ctx=128)
    d.finish(d.generate(A, 4))
    return d.model.held(0), bytes(d.model.seq_state(0))


def with_disk(num_parallel: int, read_wait: float = WAIT) -> tuple[Driver, SlowDisk, list[int]]:
    held, state = state_of_a()
    disk = SlowDisk()
    disk.entries[token_key(held)] = state
    d = Driver(num_ctx=128, num_parallel=num_parallel, cache_bytes=1 << 20)
    d.cache = SlotCache(d.model, PromptCache(1 << 20, disk, min_tokens=8, read_wait=read_wait))  # type: ignore[arg-type]
    d.loop = type(d.loop)(d.model, num_ctx=128, num_parallel=num_parallel, cache=d.cache)
    return d, disk, held


def run_threaded(d: Driver, prompt: str, n: int) -> tuple[Run, threading.Event, threading.Thread]:
    done = threading.Event()
    run = Run(1)

    def emit(ev: object) -> None:
        run(ev)  # type: ignore[arg-type]
        if run.finished:
            done.set()

    thread = threading.Thread(target=d.loop.run, daemon=True)
    thread.start()
    d.loop.submit(Generate(1, d.params(prompt, n), emit))
    return run, done, thread


def test_other_sequences_decode_while_a_state_is_read_then_it_is_restored() -> None:
    d, disk, held = with_disk(2)
    a2, b = d.generate(A2, 4), d.generate("another prompt", 30)
    d.turn()
    assert disk.started.wait(WAIT)
    for _ in range(10):
        d.turn()
        assert a2.rid not in d.loop.active and not a2.chunks  # waits for its state
    assert len(b.chunks) >= 5  # while the other one decodes
    disk.release.set()
    d.loop.turn(block=True)  # the finished read posts a wake-up
    d.finish(a2, b)
    assert a2.metrics.prompt_cache_count == sl.common_prefix(held, d.tokens(A2)) > 40
    assert d.out(a2) == expected(d.tokens(A2), 4)


def test_an_idle_loop_sleeps_until_the_read_ends() -> None:
    d, disk, held = with_disk(1)
    turns = [0]
    seat = d.loop._seat_waiting

    def counted() -> None:
        turns[0] += 1
        seat()

    d.loop._seat_waiting = counted  # type: ignore[method-assign]
    run, done, thread = run_threaded(d, A2, 4)
    assert disk.started.wait(WAIT)
    assert not done.wait(0.3)  # nothing to decode: the loop must not spin meanwhile
    assert turns[0] <= 3
    disk.release.set()
    assert done.wait(WAIT)
    assert run.metrics.prompt_cache_count == sl.common_prefix(held, d.tokens(A2)) > 40
    d.loop.submit(Stop())
    thread.join(WAIT)


def test_a_read_slower_than_the_bound_lets_an_idle_loop_start_the_prompt_cold() -> None:
    d, disk, _ = with_disk(1, read_wait=0.3)
    run, done, thread = run_threaded(d, A2, 4)
    assert done.wait(WAIT)  # woken at the deadline, not by the read (still blocked)
    assert run.metrics.prompt_cache_count < 8 and d.cache is not None
    assert d.cache.status()["disk_timeouts"] == 1
    disk.release.set()
    d.loop.submit(Stop())
    thread.join(WAIT)
