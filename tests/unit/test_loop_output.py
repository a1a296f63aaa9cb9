"""What the batching loop emits (engine Chunks and Failures) and how the runner encodes them, on
the fake model: num_predict, end of generation, stop strings, logprobs, drafts, the wire bytes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from corral.engine.base import Chunk, Metrics, TokenLogprob, TopLogprob
from corral.engine.llamacpp import protocol as proto
from corral.engine.llamacpp.loopio import Failure
from corral.engine.llamacpp.runner import event_dict
from corral.engine.llamacpp.spec import DEFAULT_PRICES, Prices, StepCost
from corral.errors import BadRequestError
from tests.fakeloop import EOS, Driver, expected, hash_rule, text_of

PROMPT = "tell me something"


class FixedCost(StepCost):
    def prices(self) -> Prices:
        return DEFAULT_PRICES


def test_num_predict_ends_with_length_after_exactly_that_many_tokens() -> None:
    d = Driver()
    r = d.generate(PROMPT, 7)
    d.finish(r)
    assert r.reason == "length" and r.metrics.eval_count == 7
    assert d.out(r) == expected(d.tokens(PROMPT), 7)
    assert r.metrics.context == d.tokens(PROMPT) + d.out(r)
    assert r.metrics.prompt_eval_count == len(d.tokens(PROMPT)) and r.metrics.prompt_cache_count == 0
    assert all(c.text for c in r.chunks[:-1]) and r.chunks[-1].done and r.chunks[-1].text == ""


def test_an_end_of_generation_token_ends_with_stop_and_is_not_printed() -> None:
    def rule(cells: Sequence[int]) -> int:
        return EOS if len(cells) >= 24 else hash_rule(cells)

    d = Driver(rule=rule)
    r = d.generate(PROMPT, 50)
    d.finish(r)
    out = expected(d.tokens(PROMPT), 50, rule=rule)
    assert out[-1] == EOS and len(out) == 24 - len(d.tokens(PROMPT)) + 1
    assert r.reason == "stop" and r.text == text_of(out[:-1]) and r.metrics.eval_count == len(out)


def test_a_stop_string_ends_the_text_before_it_even_across_tokens() -> None:
    d = Driver()
    full = text_of(expected(d.tokens(PROMPT), 40))
    stop = full[12:15]
    r = d.generate(PROMPT, 40, stop=[stop])
    d.finish(r)
    assert r.reason == "stop" and r.text == full[: full.index(stop)]
    assert all(stop not in c.text for c in r.chunks)


def test_logprobs_name_the_sampled_token_and_rank_the_alternatives() -> None:
    d = Driver()
    r = d.generate(PROMPT, 4, logprobs=True, top_logprobs=3)
    d.finish(r)
    for c in r.chunks[:-1]:
        (lp,) = c.logprobs
        assert lp.token == c.text and lp.bytes == list(c.text.encode())
        assert [t.token for t in lp.top_logprobs][:1] == [c.text] and len(lp.top_logprobs) == 3
        assert lp.logprob == pytest.approx(lp.top_logprobs[0].logprob) and lp.logprob > lp.top_logprobs[1].logprob


def test_drafted_tokens_give_the_same_output_and_rejected_drafts_leave_no_cells() -> None:
    """A repetitive rule lets n-gram drafts stand; a break in the pattern every 13 positions
    rejects them. `Driver.turn` checks after each step that the KV holds exactly `cached`."""

    def rule(cells: Sequence[int]) -> int:
        n = len(cells)
        return 2 + (n * 5) % 11 if n % 13 == 0 else cells[n - 6] if n >= 6 else 3

    plain, drafted = Driver(num_ctx=256, rule=rule), Driver(num_ctx=256, rule=rule, spec=True)
    drafted.loop.spec.costs = FixedCost()  # draft lengths independent of this machine's timings
    a, b = plain.generate(PROMPT, 80), drafted.generate(PROMPT, 80)
    plain.finish(a)
    drafted.finish(b)
    spec = drafted.loop.spec
    assert b.text == a.text == text_of(expected(plain.tokens(PROMPT), 80, rule=rule))
    assert spec.accepted > 0 and spec.drafted > spec.accepted  # some stood, some were rejected
    assert drafted.turns < plain.turns


ENCODED = [
    (Chunk("hi"), b'{"text":"hi"}\n'),
    (
        Chunk("a", [TokenLogprob("a", -0.5, [97], [TopLogprob("a", -0.5, [97])])]),
        b'{"text":"a","logprobs":[{"token":"a","logprob":-0.5,"bytes":[97],'
        b'"top_logprobs":[{"token":"a","logprob":-0.5,"bytes":[97]}]}]}\n',
    ),
    (
        Chunk("", done=True, done_reason="stop", metrics=Metrics(3, 1, 20, 2, 40, [0, 5])),
        b'{"text":"","done":true,"done_reason":"stop","metrics":{"prompt_eval_count":3,"prompt_cache_count":1,'
        b'"prompt_eval_duration":20,"eval_count":2,"eval_duration":40,"context":[0,5]}}\n',
    ),
    (Failure(BadRequestError("bad")), b'{"error":{"status":400,"message":"bad"}}\n'),
    (Failure(ValueError("boom")), b'{"error":{"status":500,"message":"ValueError: boom"}}\n'),
]


@pytest.mark.parametrize(("event", "line"), ENCODED)
def test_the_runner_encodes_loop_events_as_the_protocol_always_had_them(event: Chunk | Failure, line: bytes) -> None:
    assert proto.encode(event_dict(event)) == line


def test_a_whole_generation_survives_the_wire() -> None:
    d = Driver()
    r = d.generate(PROMPT, 5, logprobs=True, top_logprobs=2)
    d.finish(r)
    back = [proto.chunk_from_event(proto.decode(proto.encode(event_dict(c)))) for c in r.chunks]
    assert back == r.chunks
