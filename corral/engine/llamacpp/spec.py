"""Speculative decoding in the batching loop: draft tokens ride in the same `llama_decode` as every
other sequence's next token, and the ones the model agrees with are emitted at once.

Owns the n-gram drafter (the continuation of a sequence's latest tokens found earlier in its own
prompt and output: an editor's "apply this change" answer repeats its prompt), acceptance tracking
per sequence (drafts that keep failing back off exponentially, so plain chat pays almost nothing),
the per-step choice of drafts against their measured price (`Prices`: a token costs about as much
as a sequence's own token in a wide CPU batch, and with one KV stream per sequence llama.cpp runs
every distinct per-sequence token count as its own ubatch, a further pass over the weights), and
verification.

Verification keeps output identical to plain decoding: the target model's own sampler samples at
the next-token position and then at each drafted position in order, every sample is emitted
through the loop's normal per-token path (stop strings, limits, logprobs), and a draft token only
stands if it equals the sample. So each emitted token is sampled once, from logits computed on the
same accepted prefix, with the sampler's state (penalties, grammar, RNG) advanced by exactly the
emitted tokens: greedy and seeded sampling give the same text with or without drafts, as far as
ggml's arithmetic allows (its CPU kernels round differently for one query row than for several
once a sequence holds more than 256 tokens; batching has the same limit, see the README).
Rejected draft positions are then removed from the sequence's KV cells.

Does not build the batch's non-draft part, sample or emit: `batch.py` does, through the hooks below.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import llama_cpp as ll

if TYPE_CHECKING:
    from .draft import DraftModel
    from .model import Batch, LlamaModel

NGRAM = 3  # length of the indexed n-grams (a lookup key)
MAX_CANDIDATES = 8  # most recent earlier occurrences of the key compared per lookup
MAX_MATCH = 48  # longest backward match measured (beyond it, a candidate is as good as it gets)
# With its draft, a sequence puts at most 63 tokens in a ubatch: from 64 query rows on, ggml's CPU
# flash attention switches to a tiled kernel whose rounding differs from the one-row kernel plain
# decoding uses, and greedy output could then differ at a near tie.
MAX_DRAFT = 62
MAX_BACKOFF = 64  # steps a sequence waits after repeated failed drafts, at most
# A draft is cut where the chance that all its tokens stand falls below the cost of verifying one
# more token, counted in the tokens a plain step emits (`Prices.ratio`). The runner measures the
# prices (`StepCost`); until it has, a ubatch costs as much as a token (SmolLM2 on 2 CPU cores:
# ~12 ms per pass over the weights, ~5-7 ms per token), so COST alone and 0.8 four sequences wide.
COST = 0.5
COST_RANGE = (0.1, 0.95)
DRAFT_MODEL_TOKENS = 4  # a draft model's tokens per step when the request sets no draft_num_predict
DECAY = 0.7  # weight of a sequence's earlier drafts in its acceptance estimate, per draft
# A long match predicts a copy: the continuation's chance per token is at least this.
MATCH_PRIOR = ((32, 0.98), (24, 0.97), (16, 0.95), (12, 0.9))
TRUSTED_MATCH = 24  # from this length, whatever the sequence's record (Qwen2.5-Coder-1.5B writing
# new code: 12-23-token matches gave 12 of 47 draft tokens)

def open_draft(args: Any, model: LlamaModel) -> DraftModel | None:
    """The runner's draft model (`--draft`), unless drafting is off or the model cannot draft."""
    if not args.draft or args.no_speculative or not can_draft(model):
        return None
    from .draft import DraftModel

    return DraftModel(args.draft, model, extra_bufts=not args.no_extra_bufts)


def can_draft(model: LlamaModel) -> bool:
    """Whether rejected draft positions can be removed from this model's memory (not from the
    state of a recurrent or hybrid model, which keeps no per-position cells)."""
    return not (ll.llama_model_is_recurrent(model.model) or ll.llama_model_is_hybrid(model.model))


class NgramIndex:
    """End positions of every `n`-token window of one growing token list (prompt + output).

    `sync` indexes the tokens appended since the last call (a list that shrank, as after a
    context shift, is indexed again from the start); `lookup` finds where the list's current
    suffix occurred before and returns what followed it there.
    """

    def __init__(self, n: int = NGRAM) -> None:
        self.n = n
        self.ends: dict[tuple[int, ...], list[int]] = {}
        self.upto = 0  # windows ending before this position are indexed
        self._mark = -1  # tokens[upto - 1] when indexed: detects a list rewritten in place

    def sync(self, tokens: Seq[int]) -> None:
        if len(tokens) < self.upto or (self.upto and tokens[self.upto - 1] != self._mark):
            self.ends.clear()
            self.upto = 0
        n, ends = self.n, self.ends
        # a window ending at e is indexed once its continuation tokens[e] exists
        for e in range(max(self.upto, n), len(tokens)):
            key = tuple(tokens[e - n : e])
            got = ends.get(key)
            if got is None:
                ends[key] = [e]
            else:
                got.append(e)
        if len(tokens) > self.upto:
            self.upto = len(tokens)
            self._mark = tokens[-1]

    def lookup(self, tokens: Seq[int], k: int) -> tuple[int, list[int]]:
        """(match length, up to `k` draft tokens) continuing `tokens` as an earlier match did."""
        m, e = self.find(tokens)
        return (m, continuation(tokens, e, k)) if m else (0, [])

    def find(self, tokens: Seq[int]) -> tuple[int, int]:
        """(match length, end position) of the best earlier occurrence of the list's suffix;
        (0, -1) when there is none.

        Of the latest occurrences of the last `n` tokens, the one whose match extends furthest
        back wins (ties: the latest).
        """
        size, n = len(tokens), self.n
        cands = self.ends.get(tuple(tokens[size - n :])) if size >= n else None
        best_e, best_m = -1, 0
        for e in reversed(cands[-MAX_CANDIDATES:] if cands else ()):
            if e >= size:
                continue
            m = n
            while m < MAX_MATCH and e - m - 1 >= 0 and tokens[e - m - 1] == tokens[size - m - 1]:
                m += 1
            if m > best_m:
                best_e, best_m = e, m
        return best_m, best_e


def continuation(tokens: Seq[int], e: int, k: int) -> list[int]:
    """Up to `k` tokens following position `e` of `tokens`. One that runs into the list's end
    repeats with the match's period (a loop continues). Stops before a negative id (an image
    position is not a token)."""
    size = len(tokens)
    draft: list[int] = []
    for i in range(k):
        j = e + i
        t = tokens[j] if j < size else draft[j - size]
        if t < 0:
            break
        draft.append(t)
    return draft


@dataclass
class SeqSpec:
    """One sequence's drafting state: its n-gram index, acceptance estimate and back-off."""

    cap: int = MAX_DRAFT  # longest draft this request allows (draft_num_predict)
    model: bool = False  # drafts come from the runner's draft model (cap tokens each step)
    index: NgramIndex = field(default_factory=NgramIndex)
    hits: float = 2.0  # draft tokens accepted (decayed per draft)
    misses: float = 1.0  # drafts cut short by a rejection (decayed per draft)
    skip: int = 0  # steps left before the next lookup
    fails: int = 0  # consecutive drafts of which nothing was accepted
    draft: list[int] = field(default_factory=list)  # in flight this step
    n_drafts: int = 0
    n_drafted: int = 0
    n_accepted: int = 0

    def chance(self, match: int) -> float:
        """Estimated chance that a draft token stands, given the ones before it did."""
        p = (self.hits + 1.0) / (self.hits + self.misses + 2.0)
        for length, prior in MATCH_PRIOR:
            if match >= length:  # a sequence whose drafts mostly failed needs a very long match
                return max(p, prior) if p >= 0.5 or length >= TRUSTED_MATCH else p
        return p

    def length(self, match: int, cost: float) -> int:
        """Draft length: as long as the chance that all of it stands stays above the cost."""
        p = self.chance(match)
        return MAX_DRAFT if p >= 1.0 else min(int(math.log(cost) / math.log(p)), MAX_DRAFT)

    def propose(self, tokens: Seq[int], room: int, cost: float = COST) -> tuple[float, list[int]]:
        """(chance per token, draft) to verify after `tokens` (at most `room` tokens); the draft
        is [] this step. `cost`: that of one more token (`Prices.ratio`)."""
        self.index.sync(tokens)
        if self.skip > 0:
            self.skip -= 1
            return 0.0, []
        m, e = self.index.find(tokens)
        if not m:
            return 0.0, []
        # an unpromising sequence drafts nothing until a long match (a copy) makes it promising:
        # measured on Qwen2.5-Coder-1.5B writing new code, one-token probes cost 12 % of its speed
        k = self.length(m, cost)
        return self.chance(m), continuation(tokens, e, min(k, self.cap, room)) if k > 0 else []

    def record(self, drafted: int, accepted: int) -> None:
        """Learn from a verified draft; after drafts of which nothing stood, back off."""
        self.n_drafts += 1
        self.n_drafted += drafted
        self.n_accepted += accepted
        self.hits = DECAY * self.hits + accepted
        self.misses = DECAY * self.misses + (1.0 if accepted < drafted else 0.0)
        if accepted == 0:
            self.fails += 1
            self.skip = min(1 << self.fails, MAX_BACKOFF)
        else:
            self.fails = 0


@dataclass(frozen=True)
class Prices:
    """What a decode step costs (seconds, or any one unit): `ubatch` for each ubatch llama.cpp
    runs (a pass over the weights), `token` for each token in it, `between` of the loop's own work
    (sampling, events) per step."""

    ubatch: float
    token: float
    between: float = 0.0

    def step(self, n: int) -> float:
        """A plain step of `n` generating sequences (one token each, one ubatch)."""
        return self.ubatch + self.token * n + self.between

    def ratio(self, n: int) -> float:
        """One more token in a step of `n` sequences, counted in the tokens that step emits."""
        return min(max(self.token * n / self.step(n), COST_RANGE[0]), COST_RANGE[1])


DEFAULT_PRICES = Prices(ubatch=0.01, token=0.01)  # ratio(1) == COST


class StepCost:
    """The measured `Prices`: a least-squares fit `seconds = ubatch * ubatches + token * tokens`
    over recent decodes (exponentially forgotten), plus the loop's time between decodes. Until
    the decodes have varied enough in size to fit, DEFAULT_PRICES."""

    def __init__(self, decay: float = 0.98, max_tokens: int = 128, clock: Callable[[], float] = time.perf_counter):
        self.decay = decay
        self.max_tokens = max_tokens  # larger decodes (prompt chunks) take other kernels
        self.clock = clock
        self.s = [0.0] * 6  # weights, sums of u*u, u*n, n*n, u*t, n*t
        self.between = 0.0  # seconds of loop work between two decodes (smoothed)
        self._last = 0.0  # when the previous decode ended

    def observe(self, n: int, t: float, ubatches: int = 1) -> None:
        now = self.clock()
        gap = now - self._last - t  # from the end of the previous decode to the start of this one
        self._last = now
        if 0 <= gap < max(4 * t, 0.05):  # back to back (not a loop that sat idle)
            self.between = 0.9 * self.between + 0.1 * gap
        if not 0 < n <= self.max_tokens or t <= 0 or ubatches < 1:
            return
        d, s, u = self.decay, self.s, ubatches
        for i, v in enumerate((1.0, u * u, u * n, n * n, u * t, n * t)):
            s[i] = d * s[i] + v

    def prices(self) -> Prices:
        w, uu, un, nn, ut, nt = self.s
        det = uu * nn - un * un  # w * w * the variance of the size, when every decode is one ubatch
        if w < 8 or det < w * w:
            return DEFAULT_PRICES
        ubatch = (nn * ut - un * nt) / det
        token = (uu * nt - un * ut) / det
        return Prices(max(ubatch, 0.0), max(token, 0.0), self.between)

    def cost(self) -> float:
        """One more token alone, as a fraction of a one-token step."""
        return self.prices().ratio(1)


def expected(p: float, k: int) -> float:
    """Draft tokens expected to stand of `k`, each standing with chance `p` once those before it did."""
    return float(k) if p >= 1.0 else p * (1.0 - p**k) / (1.0 - p)


def ubatches(counts: Seq[int]) -> int:
    """The ubatches llama.cpp runs for a batch with these per-sequence token counts, one KV stream
    per sequence: each takes the same number of tokens from every sequence that has some left."""
    return len(set(counts))


def choose(offers: list[tuple[Any, float, list[int]]], n: int, prices: Prices, budget: int, lone: bool = True) -> int:
    """Set the drafts worth their price among `offers` ((sequence, chance per token, draft)) in a
    step of `n` generating sequences; returns the draft tokens set. The drafts share one length:
    llama.cpp runs each distinct per-sequence token count as a ubatch of its own, so a draft whose
    length no other sequence shares costs a pass over the weights besides its tokens (unless every
    sequence drafts). Gain: the tokens expected to stand, each worth a plain step's time per token.
    `lone=False`: with more than one sequence, only drafts that every sequence shares."""
    if not offers or budget <= 0 or (not lone and len(offers) < n):
        return 0
    value = prices.step(n) / n
    best, best_gain, takers = 0, 0.0, []
    for length in sorted({len(d) for _, _, d in offers}):
        able = sorted((o for o in offers if len(o[2]) >= length), key=lambda o: -o[1])
        able = able[: budget // length]
        gain = sum(value * expected(p, length) - prices.token * length for _, p, _ in able)
        if len(able) < n:
            if not lone:
                continue
            gain -= prices.ubatch
        if gain > best_gain:
            best, best_gain, takers = length, gain, able
    for seq, _, draft in takers:
        seq.spec.draft = draft[:best]
    return best * len(takers)


class SpecSeq(Protocol):
    """What speculation needs of a batching-loop sequence (`batch.Sequence`)."""

    tokens: list[int]
    n_past: int
    limit: int
    n_gen: int
    spec: SeqSpec | None

    @property
    def slot(self) -> Any: ...


class Speculator:
    """The runner's drafting policy and counters (one per batching loop).

    `seq_rm(seq_id, p0, p1)` removes KV cells of a sequence (the model's).
    """

    def __init__(self, seq_rm: Callable[[int, int, int], bool], *, enabled: bool = True, max_total: int = 256) -> None:
        self.seq_rm = seq_rm
        self.enabled = enabled
        # drafts by some of several generating sequences (an extra ubatch): on a GPU, where a pass
        # over the weights is most of a step. A CPU runner turns them off: on 2 cores they lost
        # 5-10 % at 4 and 8 sequences even when priced as paying (bench/RESULTS.md, issue 14).
        self.lone = True
        self.max_total = max_total  # draft tokens per step, all sequences together
        self.costs = StepCost()
        self.drafter: DraftModel | None = None  # the Modelfile's DRAFT, loaded beside the model
        self.drafts = 0
        self.drafted = 0
        self.accepted = 0

    def for_request(self, draft_num_predict: int) -> SeqSpec | None:
        """The drafting state of a new sequence: None when drafting is off (for the runner, or
        for this request with a negative `draft_num_predict`); a positive value caps drafts."""
        if not self.enabled or draft_num_predict < 0:
            return None
        if self.drafter is not None:  # Ollama's default: 4 tokens per step with a draft model
            return SeqSpec(cap=min(draft_num_predict or DRAFT_MODEL_TOKENS, MAX_DRAFT), model=True)
        cap = min(draft_num_predict, MAX_DRAFT) if draft_num_predict > 0 else MAX_DRAFT
        return SeqSpec(cap=cap)

    def plan(self, seqs: list[Any], num_ctx: int, capacity: int) -> int:
        """Choose this step's drafts (`seq.spec.draft`) for the generating `seqs`; returns the
        number of draft tokens chosen. A draft never reaches past the context, the sequence's
        token limit, or the batch's room."""
        budget = min(self.max_total, capacity - len(seqs))
        prices = self.costs.prices()
        ratio = prices.ratio(len(seqs))
        offers: list[tuple[Any, float, list[int]]] = []
        by_model: list[tuple[Any, int]] = []
        for seq in seqs:
            sp = seq.spec
            if sp is None:
                continue
            if sp.draft:  # decoded but never verified (a failed decode): its cells may remain
                self.seq_rm(seq.slot.seq_id, seq.n_past, -1)
                sp.draft = []
            room = min(num_ctx - 1 - seq.n_past, seq.limit - seq.n_gen - 1, budget)
            if room <= 0:
                continue
            if sp.model:
                by_model.append((seq, min(sp.cap, room)))
                continue
            p, draft = sp.propose(seq.tokens, room, ratio)
            if draft:
                offers.append((seq, p, draft))
        total = choose(offers, len(seqs), prices, budget, self.lone)
        return total + self._model_drafts(by_model, budget - total)

    def _model_drafts(self, wants: list[tuple[Any, int]], budget: int) -> int:
        """Drafts from the draft model for `wants` ((sequence, tokens wanted)), within `budget`."""
        asked: list[tuple[Any, int]] = []
        for seq, k in wants:
            if (k := min(k, budget)) > 0:
                asked.append((seq, k))
                budget -= k
        if not asked or self.drafter is None:
            return 0
        drafts = self.drafter.draft([(q.slot.seq_id, q.tokens, k) for q, k in asked])
        for (q, _), draft in zip(asked, drafts, strict=True):
            q.spec.draft = draft
        return sum(len(d) for d in drafts)

    def verify(
        self, seq: SpecSeq, idx: int, on_logits: Callable[[Any, int], None], alive: Callable[[Any], bool]
    ) -> None:
        """After the decode: emit the samples at `idx` (the next token's logits) and at each
        following draft position while the sample equals the draft; keep the accepted drafts'
        KV cells and drop the rest."""
        sp = seq.spec
        assert sp is not None
        draft, sp.draft = sp.draft, []
        accepted = 0
        for j in range(len(draft) + 1):
            on_logits(seq, idx + j)
            if j == len(draft) or not alive(seq) or seq.tokens[-1] != draft[j]:
                break
            seq.slot.cached.append(draft[j])
            seq.n_past += 1
            accepted += 1
        self.seq_rm(seq.slot.seq_id, seq.n_past, -1)
        sp.record(len(draft), accepted)
        self.drafts += 1
        self.drafted += len(draft)
        self.accepted += accepted

    def add(self, batch: Batch, seq: SpecSeq) -> int:
        """Append `seq`'s draft (if any) to `batch`, after its next token, every position with
        logits; returns the number of draft tokens added."""
        draft = seq.spec.draft if seq.spec is not None else []
        n, k = batch.n, len(draft)
        if k:
            batch.token[n : n + k] = draft
            batch.pos[n : n + k] = range(seq.n_past + 1, seq.n_past + 1 + k)
            batch.seq[n : n + k] = seq.slot.seq_id
            batch.logits[n : n + k] = 1
            batch.n = n + k
        return k

    def observe(self, n_tokens: int, seconds: float, counts: Seq[int] = ()) -> None:
        """A decode of `n_tokens` took `seconds`; `counts`: its tokens per sequence (feeds the
        prices of a draft)."""
        self.costs.observe(n_tokens, seconds, ubatches(counts) if counts else 1)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "drafts": self.drafts,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "token_cost": round(self.costs.cost(), 3),
            "prices_ms": {k: round(v * 1e3, 2) for k, v in asdict(self.costs.prices()).items()},
            "lone_drafts": self.lone,
        }

