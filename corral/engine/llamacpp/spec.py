"""Speculative decoding in the batching loop: draft tokens ride in the same `llama_decode` as every
other sequence's next token, and the ones the model agrees with are emitted at once.

Owns the n-gram drafter (the continuation of a sequence's latest tokens found earlier in its own
prompt and output: an editor's "apply this change" answer repeats its prompt), acceptance tracking
per sequence (drafts that keep failing back off exponentially, so plain chat pays almost nothing),
the per-step budget (a draft costs more in a wide batch: with one KV stream per sequence llama.cpp
evaluates the extra tokens of a sequence in an extra ubatch), and verification.

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
from dataclasses import dataclass, field
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
# more token, as a fraction of a one-token decode step. The runner measures it (`StepCost`); until
# it has, COST (SmolLM2 on 2 CPU cores: ~10 ms per extra token against ~20 ms for the step; a GPU
# is far cheaper). In a batch of several generating sequences a draft also costs an extra ubatch,
# and plain decoding already shares the weights' reads there: only near-certain drafts pay.
COST = 0.5
COST_WIDE = 0.85
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

    def propose(self, tokens: Seq[int], room: int, wide: bool, cost: float = COST) -> list[int]:
        """A draft to verify after `tokens` (at most `room` tokens), or [] this step; `cost` is
        that of one more token alone (a wide batch uses COST_WIDE)."""
        self.index.sync(tokens)
        if self.skip > 0:
            self.skip -= 1
            return []
        m, e = self.index.find(tokens)
        if not m:
            return []
        # an unpromising sequence drafts nothing until a long match (a copy) makes it promising:
        # measured on Qwen2.5-Coder-1.5B writing new code, one-token probes cost 12 % of its speed
        k = self.length(m, COST_WIDE if wide else cost)
        return continuation(tokens, e, min(k, self.cap, room)) if k > 0 else []

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


class StepCost:
    """The cost of one more token in a step, as a fraction of a one-token step, measured: a
    least-squares line `seconds = a + b * tokens` over recent decodes (exponentially forgotten),
    plus the loop's time between decodes (sampling, events, the I/O thread: a step costs it
    whatever its size), giving b / (a + between + b). Until the decodes have varied enough in
    size to fit, COST."""

    def __init__(self, decay: float = 0.98, max_tokens: int = 128, clock: Callable[[], float] = time.perf_counter):
        self.decay = decay
        self.max_tokens = max_tokens  # larger decodes (prompt chunks) take other kernels
        self.clock = clock
        self.s = [0.0] * 5  # weights, sum n, sum n^2, sum t, sum n*t
        self.between = 0.0  # seconds of loop work between two decodes (smoothed)
        self._last = 0.0  # when the previous decode ended

    def observe(self, n: int, t: float) -> None:
        now = self.clock()
        gap = now - self._last - t  # from the end of the previous decode to the start of this one
        self._last = now
        if 0 <= gap < max(4 * t, 0.05):  # back to back (not a loop that sat idle)
            self.between = 0.9 * self.between + 0.1 * gap
        if not 0 < n <= self.max_tokens or t <= 0:
            return
        d, s = self.decay, self.s
        for i, v in enumerate((1.0, n, n * n, t, n * t)):
            s[i] = d * s[i] + v

    def cost(self) -> float:
        w, sn, snn, st, snt = self.s
        if w < 8:
            return COST
        mean_n, mean_t = sn / w, st / w
        var = snn / w - mean_n * mean_n
        if var < 1.0:
            return COST
        b = (snt / w - mean_n * mean_t) / var
        a = mean_t - b * mean_n + self.between
        if b <= 0:
            return COST_RANGE[0]
        if a <= 0:
            return COST_RANGE[1]
        return min(max(b / (a + b), COST_RANGE[0]), COST_RANGE[1])


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
        wide = len(seqs) > 1
        cost = self.costs.cost()
        total = 0
        by_model: list[tuple[Any, int]] = []
        for seq in seqs:
            sp = seq.spec
            if sp is None:
                continue
            if sp.draft:  # decoded but never verified (a failed decode): its cells may remain
                self.seq_rm(seq.slot.seq_id, seq.n_past, -1)
            room = min(num_ctx - 1 - seq.n_past, seq.limit - seq.n_gen - 1, budget - total)
            if sp.model:
                sp.draft = []
                if room > 0:
                    by_model.append((seq, min(sp.cap, room)))
                    total += by_model[-1][1]
                continue
            sp.draft = sp.propose(seq.tokens, room, wide, cost) if room > 0 else []
            total += len(sp.draft)
        if by_model and self.drafter is not None:
            drafts = self.drafter.draft([(q.slot.seq_id, q.tokens, k) for q, k in by_model])
            for (q, k), draft in zip(by_model, drafts, strict=True):
                q.spec.draft = draft
                total -= k - len(draft)
        return total

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

    def observe(self, n_tokens: int, seconds: float) -> None:
        """A decode of `n_tokens` took `seconds` (feeds the cost of a draft token)."""
        self.costs.observe(n_tokens, seconds)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "drafts": self.drafts,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "token_cost": round(self.costs.cost(), 3),
        }

