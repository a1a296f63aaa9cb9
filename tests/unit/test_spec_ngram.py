"""Speculative decoding without a model: the n-gram drafter, acceptance tracking and verification."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from corral.engine.llamacpp.spec import (
    COST,
    DEFAULT_PRICES,
    MAX_BACKOFF,
    MAX_DRAFT,
    NgramIndex,
    SeqSpec,
    Speculator,
)


def lookup(tokens: list[int], k: int, n: int = 3) -> tuple[int, list[int]]:
    idx = NgramIndex(n)
    idx.sync(tokens)
    return idx.lookup(tokens, k)


def test_draft_continues_an_earlier_occurrence() -> None:
    assert lookup([1, 2, 3, 4, 5, 6, 1, 2, 3], 3) == (3, [4, 5, 6])
    assert lookup([1, 2, 3, 4, 5, 6, 1, 2, 3], 2) == (3, [4, 5])


def test_no_match_no_draft() -> None:
    assert lookup([1, 2, 3, 4, 5, 6, 7], 4) == (0, [])
    assert lookup([1, 2], 4) == (0, [])
    assert lookup([1, 2, 3, 4, 1, 2, 3], 0) == (3, [])


def test_longest_backward_match_wins_over_the_latest() -> None:
    # "1 2 3" follows 9 at the start and 8 later; the current suffix is "9 1 2 3"
    tokens = [9, 1, 2, 3, 7, 8, 1, 2, 3, 5, 9, 1, 2, 3]
    assert lookup(tokens, 1) == (4, [7])
    # equal matches: the latest occurrence
    tokens = [1, 2, 3, 7, 1, 2, 3, 5, 1, 2, 3]
    assert lookup(tokens, 1) == (3, [5])


def test_a_loop_keeps_its_period() -> None:
    assert lookup([7, 8, 7, 8], 5, n=2) == (2, [7, 8, 7, 8, 7])
    assert lookup([4, 1, 2, 3, 1, 2, 3], 7) == (3, [1, 2, 3, 1, 2, 3, 1])


def test_drafts_stop_before_image_positions() -> None:
    assert lookup([1, 2, 3, 4, -5, 6, 1, 2, 3], 4) == (3, [4])


def test_index_grows_incrementally_and_rebuilds_after_a_shift() -> None:
    idx = NgramIndex(3)
    tokens = [1, 2, 3, 4]
    idx.sync(tokens)
    tokens += [5, 1, 2, 3]
    idx.sync(tokens)
    assert idx.lookup(tokens, 2) == (3, [4, 5])
    shifted = [9, 1, 2, 3, 6, 1, 2, 3][1:]  # rewritten in place (context shift): shorter
    idx.sync(shifted)
    assert idx.lookup(shifted, 2) == (3, [6, 1])
    same_len = [9, 9, 9, 9, 9, 1, 2]  # as long, but another token where the index ended
    idx.sync(same_len)
    assert idx.lookup(same_len, 2) == (0, [])


def test_failed_drafts_back_off_exponentially_and_success_resets() -> None:
    sp = SeqSpec()
    tokens = [*range(30), 99, *range(30)]  # a 30-token match: worth drafting whatever the history
    waits = []
    for _ in range(8):
        draft = sp.propose(tokens, 16)[1]
        assert draft
        sp.record(len(draft), 0)
        n = 0
        while not sp.propose(tokens, 16)[1] and n < 1000:
            n += 1
        waits.append(n)
        sp.skip = 0
    assert waits[:6] == [2, 4, 8, 16, 32, 64]
    assert max(waits) == MAX_BACKOFF
    sp.record(4, 4)
    assert sp.fails == 0 and sp.skip == 0


def test_draft_length_follows_the_acceptance_estimate() -> None:
    sp = SeqSpec()
    first = sp.length(3, COST)
    assert 1 <= first <= 2  # an unproven sequence drafts little
    lengths = []
    for _ in range(12):  # everything accepted: the drafts keep growing
        k = sp.length(3, COST)
        sp.record(k, k)
        lengths.append(k)
    assert lengths == sorted(lengths) and lengths[-1] > 16
    assert sp.length(3, COST) == MAX_DRAFT or sp.chance(3) ** sp.length(3, COST) >= COST
    for _ in range(8):  # drafts cut after one token: short again
        sp.record(8, 1)
    assert sp.length(3, COST) <= 2
    # a draft stops where the chance that all of it stands falls below the cost of a token
    k = sp.length(3, COST)
    p = sp.chance(3)
    assert p**k >= COST > p ** (k + 1)


def test_a_long_match_is_trusted_from_the_first_draft() -> None:
    sp = SeqSpec()
    assert sp.length(3, COST) < sp.length(12, COST) < sp.length(24, COST)
    assert sp.length(32, COST) >= 32


def test_wide_batches_draft_only_near_certain_continuations() -> None:
    tokens = [1, 2, 3, 4, 5, 1, 2, 3]  # a 3-token match, unproven sequence
    four = DEFAULT_PRICES.ratio(4)  # a token four sequences wide costs most of what it is worth
    assert COST < four < 0.9
    assert SeqSpec().propose(tokens, 5) == (0.6, [4])
    assert SeqSpec().propose(tokens, 5, four)[1] == []
    doubtful = SeqSpec(hits=1.0, misses=3.0)  # its drafts mostly failed: a short match is not enough
    assert doubtful.chance(16) < 0.5 < doubtful.chance(24)
    assert doubtful.propose(tokens, 5)[1] == []
    assert doubtful.propose(tokens, 5, cost=0.2)[1] == [4]  # unless checking is cheap
    long = [*range(10, 40), 7, *range(10, 40)]  # a 30-token match
    chance, draft = SeqSpec().propose(long, 4, four)
    assert chance == pytest.approx(0.97) and draft == [7, 10, 11, 12]
    assert SeqSpec().length(30, four) < SeqSpec().length(30, COST)


def offer(p: float, k: int, seq_id: int) -> tuple[FakeSeq, float, list[int]]:
    return FakeSeq(tokens=[1], n_past=0, spec=SeqSpec(), slot=FakeSlot(seq_id=seq_id)), p, list(range(k))


def test_a_lone_draft_in_a_wide_batch_pays_for_its_own_ubatch() -> None:
    from corral.engine.llamacpp.spec import choose

    alone = [offer(0.97, 4, 0)]
    assert choose(alone, 1, DEFAULT_PRICES, 256) == 4  # one sequence: its tokens share its ubatch
    assert alone[0][0].spec is not None and alone[0][0].spec.draft == [0, 1, 2, 3]
    lone = [offer(0.97, 4, 0)]
    assert choose(lone, 4, DEFAULT_PRICES, 256) == 0  # 3 of 4 sequences without: a ubatch more
    assert lone[0][0].spec is not None and lone[0][0].spec.draft == []
    assert choose([offer(0.99, 24, 0)], 4, DEFAULT_PRICES, 256) == 24  # a long near-certain copy pays
    shared = [offer(0.97, 4, i) for i in range(4)]  # every sequence drafts: no ubatch more
    assert choose(shared, 4, DEFAULT_PRICES, 256) == 16


def test_a_cpu_runner_drafts_in_a_wide_step_only_when_every_sequence_does() -> None:
    from corral.engine.llamacpp.spec import choose

    assert choose([offer(0.99, 24, 0)], 4, DEFAULT_PRICES, 256, lone=False) == 0
    assert choose([offer(0.99, 24, 0)], 1, DEFAULT_PRICES, 256, lone=False) == 24  # alone: as ever
    shared = [offer(0.97, 4, i) for i in range(4)]
    assert choose(shared, 4, DEFAULT_PRICES, 256, lone=False) == 16
    uneven = [offer(0.97, 4, 0), offer(0.97, 9, 1)]
    assert choose(uneven, 2, DEFAULT_PRICES, 256, lone=False) == 8  # both at the shorter length
    assert [len(o[0].spec.draft) for o in uneven if o[0].spec is not None] == [4, 4]


def test_drafts_share_one_length() -> None:
    from corral.engine.llamacpp.spec import choose

    offers = [offer(0.97, 6, 0), offer(0.97, 4, 1), offer(0.97, 9, 2), offer(0.5, 1, 3)]
    assert choose(offers, 4, DEFAULT_PRICES, 256) == 12  # three share 4 tokens; a fourth ubatch would not pay
    assert [len(o[0].spec.draft) for o in offers if o[0].spec is not None] == [4, 4, 4, 0]
    assert choose([offer(0.97, 6, 0), offer(0.97, 6, 1)], 2, DEFAULT_PRICES, 8) == 6  # the budget: one


def test_prices_fit_ubatches_and_tokens() -> None:
    from corral.engine.llamacpp.spec import StepCost, ubatches

    assert ubatches([1, 1, 1, 1]) == 1 and ubatches([1, 3, 1, 5]) == 3 and ubatches([5, 5]) == 1
    c = StepCost(clock=lambda: 0.0)
    for counts in ([1], [1, 1, 1, 1], [1, 1, 1, 5], [3, 3], [1, 2, 4], [9], [1] * 8) * 4:
        c.observe(sum(counts), 0.012 * ubatches(counts) + 0.006 * sum(counts), ubatches(counts))
    got = c.prices()
    assert got.ubatch == pytest.approx(0.012) and got.token == pytest.approx(0.006)
    assert got.ratio(4) == pytest.approx(0.024 / 0.036)


@dataclass
class FakeSlot:
    seq_id: int = 3
    cached: list[int] = field(default_factory=list)


@dataclass
class FakeSeq:
    """A generating sequence after the step's decode fed its next token (tokens[-1])."""

    tokens: list[int]
    n_past: int
    limit: int = 1000
    n_gen: int = 0
    spec: SeqSpec | None = None
    slot: FakeSlot = field(default_factory=FakeSlot)
    rid: int = 1


class Loop:
    """Stands in for BatchLoop: `samples[idx]` is what the sampler picks at batch index idx."""

    def __init__(self, samples: dict[int, int], stop_at: int | None = None) -> None:
        self.samples = samples
        self.stop_at = stop_at
        self.sampled: list[int] = []
        self.finished = False
        self.removed: list[tuple[int, int, int]] = []

    def on_logits(self, seq: FakeSeq, idx: int) -> None:
        assert not self.finished, "sampled after the sequence finished"
        tok = self.samples[idx]
        self.sampled.append(idx)
        seq.n_gen += 1
        if tok == self.stop_at:
            self.finished = True
            return
        seq.tokens.append(tok)

    def alive(self, seq: FakeSeq) -> bool:
        return not self.finished

    def seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        self.removed.append((seq, p0, p1))
        return True


def verified(samples: dict[int, int], draft: list[int], stop_at: int | None = None) -> tuple[FakeSeq, Loop, Speculator]:
    loop = Loop(samples, stop_at)
    spec = Speculator(loop.seq_rm)
    seq = FakeSeq(tokens=[5, 6, 7], n_past=3, spec=SeqSpec())
    seq.slot.cached = [5, 6, 7]
    assert seq.spec is not None
    seq.spec.draft = list(draft)
    spec.verify(seq, 10, loop.on_logits, loop.alive)
    return seq, loop, spec


def test_verify_emits_the_agreeing_prefix_and_the_model_s_own_next_token() -> None:
    seq, loop, spec = verified({10: 20, 11: 21, 12: 99, 13: 23}, [20, 21, 22])
    assert loop.sampled == [10, 11, 12]  # one sample per emitted token, in order
    assert seq.tokens == [5, 6, 7, 20, 21, 99]
    assert seq.slot.cached == [5, 6, 7, 20, 21] and seq.n_past == 5  # accepted drafts stay in KV
    assert loop.removed == [(3, 5, -1)]  # the rejected draft's cells go
    assert spec.status() == {"enabled": True, "drafts": 1, "drafted": 3, "accepted": 2, "token_cost": COST,
        "prices_ms": {"ubatch": 10.0, "token": 10.0, "between": 0.0},
        "lone_drafts": True,
    }
    assert seq.spec is not None and seq.spec.draft == []


def test_verify_all_accepted_adds_the_bonus_token() -> None:
    seq, loop, spec = verified({10: 20, 11: 21, 12: 22}, [20, 21])
    assert seq.tokens[-3:] == [20, 21, 22] and seq.n_past == 5
    assert loop.removed == [(3, 5, -1)]
    assert spec.accepted == 2


def test_verify_first_token_rejected() -> None:
    seq, loop, _ = verified({10: 30}, [20, 21])
    assert loop.sampled == [10] and seq.tokens[-1] == 30 and seq.n_past == 3
    assert loop.removed == [(3, 3, -1)]


def test_verify_stops_when_the_sequence_finishes_inside_the_draft() -> None:
    seq, loop, _ = verified({10: 20, 11: 2, 12: 22}, [20, 2, 22], stop_at=2)  # an end token, drafted too
    assert loop.sampled == [10, 11]
    assert seq.n_past == 4 and loop.removed == [(3, 4, -1)]


def test_plan_respects_context_limit_and_batch_room() -> None:
    tokens = [1, 2, 3, *range(10, 80), 1, 2, 3]
    spec = Speculator(lambda s, a, b: True)

    def seq(**kw: int) -> FakeSeq:
        s = FakeSeq(tokens=list(tokens), n_past=len(tokens) - 1, spec=SeqSpec(hits=1e9, misses=0))
        for k, v in kw.items():
            setattr(s, k, v)
        return s

    a = seq()
    assert spec.plan([a], num_ctx=4096, capacity=512) == MAX_DRAFT
    b = seq(n_past=4096 - 6)
    spec.plan([b], num_ctx=4096, capacity=512)
    assert b.spec is not None and len(b.spec.draft) == 5  # positions stay below num_ctx
    c = seq(n_gen=10, limit=14)
    spec.plan([c], num_ctx=4096, capacity=512)
    assert c.spec is not None and len(c.spec.draft) == 3  # never past num_predict
    d, e = seq(), seq()  # proven sequences draft in a wide batch
    assert spec.plan([d, e], num_ctx=4096, capacity=40) == 38  # the batch holds it all


def test_plan_cleans_a_draft_that_was_never_verified() -> None:
    removed: list[tuple[int, int, int]] = []

    def seq_rm(s: int, a: int, b: int) -> bool:
        removed.append((s, a, b))
        return True

    spec = Speculator(seq_rm)
    s = FakeSeq(tokens=[1, 2, 3, 4, 1, 2, 3], n_past=6, spec=SeqSpec())
    assert s.spec is not None
    s.spec.draft = [4]
    spec.plan([s], num_ctx=4096, capacity=512)
    assert removed == [(3, 6, -1)]


def test_requests_choose_their_drafting() -> None:
    spec = Speculator(lambda s, a, b: True)
    assert spec.for_request(-1) is None
    got = spec.for_request(0)
    assert got is not None and got.cap == MAX_DRAFT
    got = spec.for_request(2)
    assert got is not None and got.cap == 2
    assert Speculator(lambda s, a, b: True, enabled=False).for_request(0) is None


def test_add_puts_drafts_after_the_next_token_with_logits() -> None:
    class B:
        n = 1
        token = np.zeros(16, dtype=np.int32)
        pos = np.zeros(16, dtype=np.int32)
        seq = np.zeros(16, dtype=np.int32)
        logits = np.zeros(16, dtype=np.int8)

    b = B()
    s = FakeSeq(tokens=[1], n_past=7, spec=SeqSpec())
    assert s.spec is not None
    s.spec.draft = [4, 5]
    assert Speculator(lambda *a: True).add(b, s) == 2  # type: ignore[arg-type]
    assert b.n == 3
    assert list(b.token[1:3]) == [4, 5] and list(b.pos[1:3]) == [8, 9]
    assert list(b.seq[1:3]) == [3, 3] and list(b.logits[1:3]) == [1, 1]


@pytest.mark.parametrize("n", [100, 5000])
def test_lookup_cost_is_bounded(n: int) -> None:
    tokens = [7] * n  # the worst case: every window is the same key
    idx = NgramIndex(3)
    idx.sync(tokens)
    m, draft = idx.lookup(tokens, 8)
    assert draft == [7] * 8 and m <= 48


def test_the_operator_switch_reaches_the_runner_command_line() -> None:
    from corral.config import Settings
    from corral.engine.llamacpp.tuning import RunnerTuning

    assert Settings.from_env({}).speculative is True
    assert Settings.from_env({"CORRAL_SPECULATIVE": "off"}).speculative is False
    assert "--no-speculative" not in RunnerTuning().argv()
    assert "--no-speculative" in RunnerTuning(speculative=False).argv()


def test_the_cost_of_a_draft_token_is_measured() -> None:
    from corral.engine.llamacpp.spec import COST_RANGE, StepCost

    c = StepCost(clock=lambda: 0.0)  # decodes only: no loop time between them
    assert c.cost() == COST  # nothing measured
    one = StepCost()
    for _ in range(20):
        one.observe(1, 0.020)
    assert one.cost() == COST  # one size only: no slope
    for n in (1, 5, 9, 17, 33) * 6:
        c.observe(n, 0.012 + 0.004 * n)  # a = 12 ms, b = 4 ms per token
    assert c.cost() == pytest.approx(0.004 / 0.016, rel=0.01)
    c.observe(500, 10.0)  # a prompt chunk: not a verification
    assert c.cost() == pytest.approx(0.25, rel=0.01)
    slow = StepCost()
    for n in (1, 2, 4, 8) * 5:
        slow.observe(n, 0.020 * n)  # every token costs a full step: drafts barely pay
    assert slow.cost() == COST_RANGE[1]


def test_a_draft_model_drafts_for_every_sequence_within_the_room() -> None:
    class Drafter:
        def __init__(self) -> None:
            self.asked: list[list[tuple[int, int, int]]] = []

        def draft(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
            self.asked.append([(sid, len(toks), k) for sid, toks, k in wants])
            return [[7] * min(k, 3) for _, _, k in wants]

    spec = Speculator(lambda s, a, b: True)
    d = Drafter()
    spec.drafter = d  # type: ignore[assignment]
    assert spec.for_request(-1) is None
    default, capped = spec.for_request(0), spec.for_request(2)
    assert default is not None and default.model and default.cap == 4  # Ollama's default
    assert capped is not None and capped.cap == 2
    a = FakeSeq(tokens=[1, 2, 3], n_past=2, spec=default)
    b = FakeSeq(tokens=[4, 5], n_past=1, spec=capped, slot=FakeSlot(seq_id=1))
    c = FakeSeq(tokens=[6], n_past=0, spec=spec.for_request(0), slot=FakeSlot(seq_id=2), n_gen=9, limit=10)
    assert spec.plan([a, b, c], num_ctx=4096, capacity=512) == 3 + 2
    assert d.asked == [[(3, 3, 4), (1, 2, 2)]]  # c is at its token limit: not asked
    assert a.spec is not None and a.spec.draft == [7, 7, 7]
    assert b.spec is not None and b.spec.draft == [7, 7]


def test_the_loop_s_own_time_per_step_makes_a_draft_token_cheaper() -> None:
    from corral.engine.llamacpp.spec import StepCost

    now = [0.0]
    c = StepCost(clock=lambda: now[0])
    for n in (1, 5, 9, 17, 33) * 6:
        t = 0.012 + 0.004 * n
        now[0] += 0.012 + t  # 12 ms between decodes (sampling, events), then the decode
        c.observe(n, t)
    assert c.between == pytest.approx(0.012, rel=0.05)
    assert c.cost() == pytest.approx(0.004 / 0.028, rel=0.05)
    now[0] += 30.0  # an idle loop: not a step's overhead
    c.observe(1, 0.016)
    assert c.between == pytest.approx(0.012, rel=0.05)
