"""A deterministic fake model for the batching loop (corral.engine.llamacpp.loopmodel.LoopModel).

The vocabulary: 0 is BOS, 1 is EOS (end of generation), 2..27 are the letters a-z, 28 a space.
`tokenize` maps each character of a text to its token (anything else becomes "z"), one token per
character, so texts and token lists convert both ways.

The KV cache is modelled cell by cell: `cells[seq]` maps position -> token for each sequence, and
every KV operation (seq_rm, seq_cp, seq_add, state save/restore) acts on it as llama.cpp would. The
logits of a decoded token are computed from what the KV cells of its sequence hold at positions 0..p
(`rule`), not from the batch: a wrong reuse, a missing seq_rm, a bad copy or a bad shift changes the
output. Decoding a position that is already held, or with a gap below it, raises `KVError` (the
loop would attend to garbage on a real model). `expected()` computes the greedy output a fresh
sequence gives, shift included, for comparison.

`decode` returns 1 (KV cache full, nothing stored) when the cells of all sequences would exceed
`kv_size`, or the next code queued in `fail_codes`. Counters: `decoded` (every token decoded, as
(seq, pos, token)), `copies` (seq_cp calls), `decodes` (calls).
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from corral.engine.base import Chunk, GenerateParams, Metrics
from corral.engine.llamacpp.batch import BatchLoop
from corral.engine.llamacpp.loopio import Cancel, Event, Failure, Generate
from corral.engine.llamacpp.model import Batch, ContextConfig
from corral.engine.llamacpp.promptcache import PromptCache, SlotCache
from corral.errors import BadRequestError
from corral.schemas.options import SampleOptions

BOS, EOS, SPACE = 0, 1, 28
N_VOCAB = 29
LETTERS = "abcdefghijklmnopqrstuvwxyz"
Rule = Callable[[Sequence[int]], int]


class KVError(AssertionError):
    """The loop asked for a KV state llama.cpp would have computed garbage from."""


def hash_rule(cells: Sequence[int]) -> int:
    """The next token after `cells` (a letter or a space; never EOS): depends on every cell."""
    h = 17
    for i, t in enumerate(cells):
        h = (h * 31 + t * 7 + i) % 1_000_003
    return 2 + h % 27


def text_of(tokens: Sequence[int]) -> str:
    return "".join(piece_text(t) for t in tokens)


def piece_text(t: int) -> str:
    if t == SPACE:
        return " "
    if 2 <= t < 2 + len(LETTERS):
        return LETTERS[t - 2]
    return ""


def expected(
    prompt: Sequence[int],
    n: int,
    *,
    rule: Rule = hash_rule,
    num_ctx: int = 1 << 30,
    keep: int = 0,
) -> list[int]:
    """The first `n` greedy tokens after `prompt` on a fresh sequence (up to an EOS), with the
    loop's context shift: at `num_ctx` positions, (num_ctx - keep) // 2 after `keep` go."""
    return simulate(prompt, n, rule=rule, num_ctx=num_ctx, keep=keep)[0]


def simulate(
    prompt: Sequence[int],
    n: int,
    *,
    rule: Rule = hash_rule,
    num_ctx: int = 1 << 30,
    keep: int = 0,
) -> tuple[list[int], list[int]]:
    """(`expected`'s tokens, the tokens the sequence's KV holds at the end: the last sampled
    token is never decoded)."""
    cells = list(prompt)
    out: list[int] = []
    while True:
        t = rule(cells)
        out.append(t)
        if t == EOS or len(out) >= n:
            return out, cells
        if len(cells) >= num_ctx:
            drop = max((num_ctx - keep) // 2, 1)
            del cells[keep : keep + drop]
        cells.append(t)


class FakeModel:
    """Satisfies LoopModel; greedy sampling only (no native context, grammar or adapters)."""

    def __init__(
        self,
        *,
        n_seq: int,
        n_batch: int = 16,
        kv_size: int = 1 << 30,
        add_bos: bool = True,
        rule: Rule = hash_rule,
        partial_rm: bool = True,
        shift: bool = True,
    ) -> None:
        self.cfg = ContextConfig(n_ctx=kv_size, n_seq=n_seq, n_batch=n_batch, threads=1)
        self.batch = Batch(n_batch)
        self.ctx: Any = None
        self.vocab: Any = None
        self.loras: tuple[Any, ...] = ()
        self.n_vocab = N_VOCAB
        self.add_bos = add_bos
        self.rule = rule
        self.kv_size = kv_size
        self.partial_rm = partial_rm  # False: only whole sequences can be removed (recurrent)
        self.shift = shift
        self.cells: dict[int, dict[int, int]] = {s: {} for s in range(n_seq)}
        self.fail_codes: list[int] = []
        self.decoded: list[tuple[int, int, int]] = []
        self.decodes = 0
        self.copies = 0
        self._rows: dict[int, npt.NDArray[np.float32]] = {}

    # --- vocabulary ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        ids = [SPACE if c == " " else 2 + LETTERS.index(c) if c in LETTERS else 27 for c in text]
        return [BOS, *ids] if add_special and self.add_bos else ids

    def piece(self, token: int, special: bool = False) -> bytes:
        if special and token in (BOS, EOS):
            return b"<s>" if token == BOS else b"</s>"
        return piece_text(token).encode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def eog_tokens(self) -> list[int]:
        return [EOS]

    def check_tokens(self, tokens: list[int]) -> None:
        for t in tokens:
            if not 0 <= t < N_VOCAB:
                raise BadRequestError(f"invalid token id {t!r}")

    # --- decoding -----------------------------------------------------------------------------
    def decode(self) -> int:
        self.decodes += 1
        b = self.batch
        n = int(b.struct.n_tokens)
        if self.fail_codes:
            return self.fail_codes.pop(0)
        if sum(len(c) for c in self.cells.values()) + n > self.kv_size:
            return 1
        entries = [(int(b.seq[i]), int(b.pos[i]), int(b.token[i])) for i in range(n)]
        for seq, pos, tok in entries:
            if pos in self.cells[seq]:
                raise KVError(f"seq {seq}: position {pos} is already held")
            self.cells[seq][pos] = tok
            self.decoded.append((seq, pos, tok))
        self._rows = {}
        for i, (seq, pos, _) in enumerate(entries):
            if b.logits[i]:
                self._rows[i] = self._row(self._view(seq, pos))
        return 0

    def _view(self, seq: int, pos: int) -> list[int]:
        """Tokens at positions 0..pos of `seq`; a gap is an error."""
        held = self.cells[seq]
        missing = [p for p in range(pos + 1) if p not in held]
        if missing:
            raise KVError(f"seq {seq}: decoding position {pos} with positions {missing[:5]} missing")
        return [held[p] for p in range(pos + 1)]

    def _row(self, cells: list[int]) -> npt.NDArray[np.float32]:
        row = np.full(N_VOCAB, -4.0, dtype=np.float32)
        row[self.rule(cells)] = 4.0
        return row

    def logits(self, i: int) -> npt.NDArray[np.float32]:
        return self._rows[i]

    # --- KV sequences -------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        lo = max(p0, 0)
        hi = p1 if p1 >= 0 else 1 << 62
        if (lo > 0 or p1 >= 0) and not self.partial_rm:
            return False
        for s in self.cells if seq < 0 else [seq]:
            self.cells[s] = {p: t for p, t in self.cells[s].items() if not lo <= p < hi}
        return True

    def seq_cp(self, src: int, dst: int, n: int) -> None:
        if self.cells[dst]:
            raise KVError(f"seq_cp into seq {dst}, which still holds {len(self.cells[dst])} cells")
        self.copies += 1
        self.cells[dst] = {p: t for p, t in self.cells[src].items() if p < n}

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        hi = p1 if p1 >= 0 else 1 << 62
        moved = {p + delta: t for p, t in self.cells[seq].items() if p0 <= p < hi}
        rest = {p: t for p, t in self.cells[seq].items() if not p0 <= p < hi}
        if set(moved) & set(rest):
            raise KVError(f"seq_add on seq {seq} moves cells onto held positions")
        self.cells[seq] = {**rest, **moved}

    def seq_state(self, seq: int) -> bytearray:
        flat = array("i", [v for p, t in sorted(self.cells[seq].items()) for v in (p, t)])
        return bytearray(flat.tobytes())

    def seq_restore(self, seq: int, data: bytearray) -> bool:
        flat = array("i")
        flat.frombytes(bytes(data))
        self.cells[seq] = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
        return True

    def can_shift(self) -> bool:
        return self.shift

    # --- for tests ----------------------------------------------------------------------------
    def held(self, seq: int) -> list[int]:
        """The tokens `seq` holds, in position order (positions must run 0..n-1)."""
        return self._view(seq, len(self.cells[seq]) - 1) if self.cells[seq] else []

    def decoded_by(self, seq: int) -> list[int]:
        """Every token decoded into `seq`, in order."""
        return [t for s, _, t in self.decoded if s == seq]


# --- driving a BatchLoop on the fake, one turn at a time ----------------------------------------
@dataclass
class Run:
    """What one request received."""

    rid: int
    chunks: list[Chunk] = field(default_factory=list)
    failure: Failure | None = None

    def __call__(self, ev: Event) -> None:
        assert not self.finished, f"request {self.rid} got {ev!r} after its end"
        if isinstance(ev, Failure):
            self.failure = ev
        else:
            self.chunks.append(ev)

    @property
    def finished(self) -> bool:
        return self.failure is not None or bool(self.chunks and self.chunks[-1].done)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def reason(self) -> str | None:
        return self.chunks[-1].done_reason if self.chunks and self.chunks[-1].done else None

    @property
    def metrics(self) -> Metrics:
        m = self.chunks[-1].metrics if self.chunks else None
        assert m is not None, f"request {self.rid} has not finished: {self.failure}"
        return m

    @property
    def error(self) -> str:
        assert self.failure is not None, f"request {self.rid} did not fail"
        return str(getattr(self.failure.error, "message", self.failure.error))


class Driver:
    """A BatchLoop on a FakeModel, driven synchronously (no thread): `turn()` runs one loop
    iteration and then checks that every slot's `cached` tokens are exactly what its KV holds."""

    def __init__(
        self,
        *,
        num_ctx: int = 64,
        num_parallel: int = 1,
        n_batch: int = 16,
        spec: bool = False,
        cache_bytes: int = 0,
        cache_min: int = 8,
        **model: Any,
    ) -> None:
        self.model = FakeModel(n_seq=num_parallel, n_batch=n_batch, **model)
        self.cache = SlotCache(self.model, PromptCache(cache_bytes, min_tokens=cache_min)) if cache_bytes else None
        self.loop = BatchLoop(self.model, num_ctx=num_ctx, num_parallel=num_parallel, cache=self.cache)
        self.loop.spec.enabled = spec
        self.rids = itertools.count(1)
        self.turns = 0

    def params(self, prompt: str, n: int = 8, **opts: Any) -> GenerateParams:
        extra = {k: opts.pop(k) for k in ("shift", "truncate", "logprobs", "top_logprobs") if k in opts}
        options = SampleOptions(temperature=0.0, num_predict=n, **opts)
        return GenerateParams(prompt=prompt, options=options, **extra)

    def generate(self, prompt: str, n: int = 8, **opts: Any) -> Run:
        run = Run(next(self.rids))
        self.loop.submit(Generate(run.rid, self.params(prompt, n, **opts), run))
        return run

    def cancel(self, run: Run) -> None:
        self.loop.submit(Cancel(run.rid))

    def turn(self) -> None:
        self.loop.turn()
        self.turns += 1
        self.check()

    def until(self, done: Callable[[], bool], limit: int = 2000) -> None:
        for _ in range(limit):
            if done():
                return
            self.turn()
        raise AssertionError(f"not done after {limit} turns")

    def finish(self, *runs: Run) -> None:
        self.until(lambda: all(r.finished for r in runs))

    def check(self) -> None:
        for slot in self.loop.slots:
            held = self.model.held(slot.seq_id)
            assert held == slot.cached, f"slot {slot.seq_id}: cached {slot.cached} but the KV holds {held}"

    def tokens(self, prompt: str) -> list[int]:
        """The ids the loop runs for `prompt` (BOS first)."""
        return self.model.tokenize(prompt)

    def out(self, run: Run) -> list[int]:
        """The generated tokens of `run` (from its text: one character per token)."""
        return self.model.tokenize(run.text, add_special=False)
