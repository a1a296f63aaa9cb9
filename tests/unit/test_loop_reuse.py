"""Prefix reuse, shared-prefix copies and the prompt cache in the batching loop, on the fake model.

The fake computes each token from what its sequence's KV cells hold, and `Driver.turn` checks after
every step that each slot's `cached` tokens are exactly its KV: a reuse that kept stale cells, a copy
of the wrong length or a restore of the wrong state changes the output or fails that check.
"""

from __future__ import annotations

from corral.engine.llamacpp.batch import SHARE_MIN_TOKENS
from tests.fakeloop import Driver, expected

LONG = "a conversation that has gone on for a while and will go on for longer still"


def test_a_prompt_extending_the_last_exchange_decodes_only_its_new_tokens() -> None:
    d = Driver(num_ctx=256, n_batch=16)
    a = d.generate(LONG, 4)
    d.finish(a)
    follow = LONG + a.text + " and more"
    before = len(d.model.decoded)
    b = d.generate(follow, 4)
    d.finish(b)
    reused = len(d.tokens(LONG)) + 3  # a's prompt and its three decoded answer tokens
    new = d.model.decoded[before:]
    assert b.metrics.prompt_cache_count == reused
    assert len(new) == len(d.tokens(follow)) - reused + 3  # the new prompt tokens, then 3 answers
    assert new[0][1] == reused  # the first position decoded is the first new one
    assert d.out(b) == expected(d.tokens(follow), 4)


def test_a_diverging_prompt_keeps_the_common_prefix_and_drops_the_rest() -> None:
    d = Driver(num_ctx=256)
    a = d.generate(LONG, 6)
    d.finish(a)
    other = LONG[:30] + "zzzz something else entirely"
    b = d.generate(other, 6)
    d.finish(b)
    assert b.metrics.prompt_cache_count == 31  # BOS + 30 shared characters
    assert d.out(b) == expected(d.tokens(other), 6)  # no stale cell of `a` behind the prefix


def test_the_same_prompt_again_decodes_only_its_last_token() -> None:
    d = Driver(num_ctx=256)
    a = d.generate(LONG, 3)
    d.finish(a)
    before = len(d.model.decoded)
    b = d.generate(LONG, 3)
    d.finish(b)
    n = len(d.tokens(LONG))
    assert b.metrics.prompt_cache_count == n - 1
    assert d.model.decoded[before][1:] == (n - 1, d.tokens(LONG)[-1])
    assert b.text == a.text


def test_a_prompt_sharing_a_prefix_with_one_being_prefilled_copies_it() -> None:
    """B arrives with A and shares 70 tokens with it: B waits while A's prefill gets further (as
    long as waiting saves at least SHARE_MIN_TOKENS), then copies A's computed prefix."""
    d = Driver(num_parallel=2, num_ctx=256, n_batch=16)
    shared = 70
    other = LONG[: shared - 1] + "xyz and a different ending"
    a, b = d.generate(LONG, 4), d.generate(other, 4)
    d.turn()
    assert b.rid not in d.loop.active and d.loop.active[a.rid].next_token is None  # b waits
    d.finish(a, b)
    copied = b.metrics.prompt_cache_count
    assert d.model.copies == 1 and shared - SHARE_MIN_TOKENS < copied <= shared
    b_seq = _seq_of(d, other)
    assert len(d.model.decoded_by(b_seq)) == len(d.tokens(other)) - copied + 3  # the rest + 3 answers
    assert d.out(a) == expected(d.tokens(LONG), 4) and d.out(b) == expected(d.tokens(other), 4)


def test_a_short_shared_prefix_is_computed_again_not_waited_for() -> None:
    d = Driver(num_parallel=2, num_ctx=256, n_batch=16)
    other = LONG[:10] + " but short"
    a = d.generate(LONG, 4)
    d.turn()
    b = d.generate(other, 4)
    d.turn()
    assert b.rid in d.loop.active  # seated at once beside a's prefill
    d.finish(a, b)
    assert d.model.copies == 0 and d.out(b) == expected(d.tokens(other), 4)


def test_the_prompt_cache_restores_a_conversation_whose_slot_went_to_another() -> None:
    d = Driver(num_parallel=1, num_ctx=256, cache_bytes=1 << 20)
    a = d.generate(LONG, 4)
    d.finish(a)
    c = d.generate("an unrelated question", 4)
    d.finish(c)
    assert d.loop.slots[0].cached[:3] == d.tokens("an unrelated question")[:3]
    follow = LONG + a.text + " and more"
    before = len(d.model.decoded)
    b = d.generate(follow, 4)
    d.finish(b)
    reused = len(d.tokens(LONG)) + 3
    assert d.cache is not None and d.cache.cache.stats.hits == 1
    assert b.metrics.prompt_cache_count == reused
    assert len(d.model.decoded) - before == len(d.tokens(follow)) - reused + 3
    assert d.out(b) == expected(d.tokens(follow), 4)


def _seq_of(d: Driver, prompt: str) -> int:
    """The sequence whose KV starts with `prompt`'s tokens."""
    want = d.tokens(prompt)
    (seq,) = [s.seq_id for s in d.loop.slots if d.model.held(s.seq_id)[: len(want)] == want]
    return seq
