"""The continuous-batching loop of a runner process (runs on the one thread that owns the model).

Owns request admission (tokenize, truncate, seat in a slot with prefix reuse or a shared-prefix
copy), the per-step batch (one token per generating sequence + a budgeted chunk of prompt tokens,
one `llama_decode`), sampling, stop/length decisions, context shift, KV-pressure eviction and
cancellation. Talks to the I/O side only through `submit()` (thread-safe inbox of loopio's typed
messages) and the `emit` callbacks it is given: it emits engine values (`Chunk`, `Failure`), which
the runner encodes. Events are collected per loop iteration and handed over in one call to
`dispatch` (which must be thread-safe; without one, each emit is called directly). Works on any
`LoopModel` (loopmodel.py: `LlamaModel`, or a fake in tests). Does not do socket I/O.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.engine.base import Chunk, GenerateParams, Metrics, TokenLogprob
from corral.errors import BadRequestError, CorralError

from . import media as md
from . import slots as sl
from .detok import StopMatcher, Utf8Assembler
from .loopio import Call, Cancel, Emit, Event, Failure, Generate, Message, Out, Reply, Stop, Wake
from .loopmodel import LoopModel
from .lora import LoraScales
from .prompt import prompt_ids
from .promptcache import SlotCache
from .sampling import SeqSampler, token_logprob
from .spec import SeqSpec, Speculator

log = logging.getLogger(__name__)
# A new prompt sharing at least this many more tokens with a sequence still being prefilled waits
# for that prefill and copies the computed prefix instead of computing it a second time.
SHARE_MIN_TOKENS = 32
UNLOADED = "the model was unloaded before this request finished"


@dataclass
class Sequence:
    rid: int
    params: GenerateParams
    emit: Emit
    slot: sl.Slot
    tokens: list[int]
    n_prompt: int
    n_past: int
    n_cached: int
    sampler: SeqSampler
    limit: int
    t_seated: float
    utf8: Utf8Assembler = field(default_factory=Utf8Assembler)
    stop: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    next_token: int | None = None
    n_gen: int = 0
    t_first: float = 0.0
    spec: SeqSpec | None = None  # drafting state (spec.py); None: no drafts
    media: md.MediaPrompt | None = None  # image spans of the prompt (media.py)


@dataclass
class StepStats:
    steps: int = 0
    total_s: float = 0.0
    decode_s: float = 0.0
    by_width: dict[int, list[float]] = field(default_factory=dict)

    def record(self, width: int, total: float, decode: float) -> None:
        self.steps += 1
        self.total_s += total
        self.decode_s += decode
        acc = self.by_width.setdefault(width, [0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += total
        acc[2] += decode

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "by_width": {
                str(w): {
                    "steps": int(a[0]),
                    "step_ms": 1e3 * a[1] / a[0],
                    "overhead_ms": 1e3 * (a[1] - a[2]) / a[0],
                }
                for w, a in sorted(self.by_width.items())
            },
        }


class BatchLoop:
    def __init__(self, model: LoopModel, *, num_ctx: int, num_parallel: int, cache: SlotCache | None = None) -> None:
        self.model = model
        self.cache = cache  # prompt cache beyond the slots (promptcache.py)
        self.num_ctx = num_ctx
        self.slots = [sl.Slot(i) for i in range(num_parallel)]
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.waiting: deque[tuple[int, GenerateParams, Emit, list[int]]] = deque()
        self.active: dict[int, Sequence] = {}
        self.stats = StepStats()
        self.vision: md.Vision | None = None  # libmtmd, for a model with a projector (media.py)
        self.spec = Speculator(lambda s, p0, p1: self.model.seq_rm(s, p0, p1))  # speculative decoding (spec.py)
        self.lora = LoraScales(model.ctx, model.loras)  # per-request adapter scales (lora.py)
        self.running = True
        self.dispatch: Callable[[list[Out]], None] | None = None
        self.on_stopped: Callable[[], None] | None = None  # called on the loop thread after the last flush
        self._out: list[Out] = []
        if cache is not None:
            cache.wake = lambda: self.inbox.put(Wake())  # a prompt-cache disk read ended

    # --- thread-safe entry points ----------------------------------------------------------
    def submit(self, msg: Message) -> None:
        self.inbox.put(msg)

    def run(self) -> None:
        while self.running:
            # nothing running: whatever still waits, waits for a disk read whose end posts Wake()
            idle = not self.active and (not self.waiting or (self.cache is not None and self.cache.reading()))
            self.turn(block=idle)
        if self.on_stopped is not None:
            self.on_stopped()

    def turn(self, *, block: bool = False) -> None:
        """One iteration: read the inbox (waiting for a message if `block`), seat what fits, one
        step, hand the events over. `run()` repeats it; a test may call it directly."""
        if block:
            self._handle(self.inbox.get())
        while True:
            try:
                self._handle(self.inbox.get_nowait())
            except queue.Empty:
                break
        if self.running:
            self._seat_waiting()
            if self.active:
                self.step()
        self._flush()

    def _send(self, emit: Callable[[Any], None], ev: Event | Reply) -> None:
        self._out.append((emit, ev))

    def _flush(self) -> None:
        """Hand this iteration's events to the I/O side in one go (one cross-thread wake-up)."""
        if not self._out:
            return
        out, self._out = self._out, []
        if self.dispatch is not None:
            self.dispatch(out)
        else:
            for emit, ev in out:
                emit(ev)

    # --- inbox ----------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Generate):
            if not self.running:
                self._send(msg.emit, Failure(CorralError(UNLOADED)))
                return
            try:
                self.waiting.append((msg.rid, msg.params, msg.emit, self._prepare(msg.params)))
            except CorralError as exc:
                self._send(msg.emit, Failure(exc))
        elif isinstance(msg, Cancel):
            self._cancel(msg.rid)
        elif isinstance(msg, Call):
            try:
                self._send(msg.emit, msg.fn())
            except Exception as exc:
                self._send(msg.emit, Failure(exc))
        elif isinstance(msg, Stop) and self.running:
            self._stop_all()

    def _stop_all(self) -> None:
        """End every sequence, running or waiting, with an error event; the loop then exits."""
        exc = CorralError(UNLOADED)
        if self.cache is not None:
            self.cache.save_all(self.slots)
        for seq in list(self.active.values()):
            self._fail(seq, exc)
        for _, _, emit, _ in self.waiting:
            self._send(emit, Failure(exc))
        self.waiting.clear()
        self.running = False

    def _prepare(self, params: GenerateParams) -> list[int]:
        if params.images:
            return md.admit(self.vision, params, self.num_ctx)
        tokens = prompt_ids(self.model, params)
        if not tokens:
            raise BadRequestError("the prompt is empty")
        keep = sl.keep_count(params.options.num_keep, self.model.add_bos, self.num_ctx)
        if len(tokens) > self.num_ctx - 1:
            allow = params.shift and params.truncate
            new = sl.truncate_prompt(tokens, self.num_ctx, keep, shift=allow)
            log.warning(
                "truncating input prompt limit=%d prompt=%d keep=%d new=%d",
                self.num_ctx,
                len(tokens),
                keep,
                len(new),
            )
            tokens = new
        return tokens

    def _cancel(self, rid: int) -> None:
        """Forget request `rid`. A running one keeps the KV of the positions it decoded (the slot's
        `cached`, in step with the KV after each decode), so a regenerate after a stop prefills
        only what is new; cells beyond them (a draft that was never verified) go. A prompt with
        images starts over (its KV may hold part of an image)."""
        self.waiting = deque(w for w in self.waiting if w[0] != rid)
        seq = self.active.pop(rid, None)
        if seq is not None:
            slot = seq.slot
            if seq.media is not None or not self.model.seq_rm(slot.seq_id, len(slot.cached), -1):
                self.model.seq_rm(slot.seq_id)
                slot.cached = []
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        seq.sampler.free()
        seq.slot.busy = False
        seq.slot.last_used = time.monotonic()

    # --- admission ------------------------------------------------------------------------
    def _seat_waiting(self) -> None:
        deferred: deque[tuple[int, GenerateParams, Emit, list[int]]] = deque()
        self._order_waiting()
        while self.waiting:
            rid, params, emit, tokens = self.waiting.popleft()
            idle = not all(s.busy for s in self.slots)  # no prompt-cache lookup while none can be seated
            if idle and self.cache is not None and self.cache.pending(tokens, self.slots):
                deferred.append((rid, params, emit, tokens))  # its cached state is being read from disk
                continue
            stored = self.cache.best(tokens) if self.cache is not None and idle else 0
            plan = sl.plan_slot(self.slots, tokens, SHARE_MIN_TOKENS, stored)
            if plan is None:
                self.waiting.appendleft((rid, params, emit, tokens))
                break
            if self._prefix_in_flight(tokens) >= plan.reused + SHARE_MIN_TOKENS:
                deferred.append((rid, params, emit, tokens))  # copy it once computed
                continue
            try:
                self._seat(rid, params, emit, tokens, plan)
            except CorralError as exc:
                self._send(emit, Failure(exc))
        self.waiting.extendleft(reversed(deferred))

    def _order_waiting(self) -> None:
        """Among the waiting prompts seated this round, the warmest pick their slot first."""
        n = sum(not s.busy for s in self.slots)
        if n > 1 and len(self.waiting) > 1:
            head, rest = list(self.waiting)[:n], list(self.waiting)[n:]
            stored = [self.cache.best(w[3]) if self.cache is not None else 0 for w in head]
            self.waiting = deque([head[i] for i in sl.seat_order([w[3] for w in head], self.slots, stored)] + rest)

    def _prefix_in_flight(self, tokens: list[int]) -> int:
        """Longest prefix of `tokens` that an active sequence is still prefilling."""
        limit = len(tokens) - 1
        best = 0
        for seq in self.active.values():
            if seq.next_token is None:
                best = max(best, min(sl.common_prefix(seq.tokens[: seq.n_prompt], tokens), limit))
        return best

    def _seat(self, rid: int, params: GenerateParams, emit: Emit, tokens: list[int], plan: sl.SlotPlan) -> None:
        plan = self.lora.fit(plan, params)  # no KV reuse across LoRA scales
        slot = self.slots[plan.slot]
        m = self.model
        if self.cache is not None:
            self.cache.before_seat(slot, plan)  # keep what this plan throws away
        if plan.restore and self.cache is not None:
            self.cache.restore(slot, tokens)
        elif plan.copy_from is not None:
            m.seq_rm(slot.seq_id)
            m.seq_cp(plan.copy_from, slot.seq_id, plan.copy_len)
            slot.cached = list(self.slots[plan.copy_from].cached[: plan.copy_len])
        elif not m.seq_rm(slot.seq_id, plan.keep, -1):
            m.seq_rm(slot.seq_id)
            slot.cached = []
        else:
            slot.cached = slot.cached[: plan.keep]
        n_past = len(slot.cached)
        n_past = md.align(m, slot, tokens, n_past)  # never from inside an image
        opts = params.options
        sampler = SeqSampler(m, opts, grammar=params.grammar, num_ctx=self.num_ctx, ignore_eos=params.ignore_eos)
        if opts.repeat_last_n != 0:
            last_n = self.num_ctx if opts.repeat_last_n < 0 else opts.repeat_last_n
            sampler.accept_prompt(tokens[-last_n:])
        limit = opts.num_predict if opts.num_predict >= 0 else 10 * self.num_ctx
        if opts.num_predict == -2:
            limit = self.num_ctx
        slot.busy = True
        self.active[rid] = Sequence(
            rid=rid,
            params=params,
            emit=emit,
            slot=slot,
            tokens=list(tokens),
            n_prompt=len(tokens),
            n_past=n_past,
            n_cached=n_past,
            sampler=sampler,
            limit=limit,
            t_seated=time.perf_counter(),
            stop=StopMatcher(tuple(s for s in opts.stop if s)),
            media=getattr(tokens, "media", None),
            spec=self.spec.for_request(opts.draft_num_predict),
        )

    # --- one step -------------------------------------------------------------------------
    def step(self) -> None:
        if self.vision is not None:  # at most one image piece per step, between the steps
            self.vision.decode_pending(self.lora.runnable(self.active.values()), self._on_logits, self._fail)
        t0 = time.perf_counter()
        batch = self.model.batch
        batch.clear()
        outs: list[tuple[Sequence, int]] = []
        fed: list[tuple[Sequence, int]] = []
        # One pass in ascending seq_id order: with one KV stream per sequence, llama.cpp splits a
        # batch whose sequences are out of order into several ubatches (measured: steps slowed from
        # ~43 to ~57 ms at 8 sequences once slot reuse had shuffled the order).
        ordered = sorted(self.active.values(), key=lambda q: q.slot.seq_id)
        ordered = self.lora.select(ordered)  # one LoRA configuration per decode
        decoding = {id(q) for q in ordered if q.next_token is not None and (q.n_past < self.num_ctx or self._shift(q))}
        reserved = len(decoding)
        reserved += self.spec.plan([q for q in ordered if id(q) in decoding], self.num_ctx, batch.capacity)
        width = 0
        for seq in ordered:
            if seq.next_token is not None:
                if id(seq) not in decoding:
                    continue
                idx = batch.add_one(seq.next_token, seq.n_past, seq.slot.seq_id)
                outs.append((seq, idx))
                fed.append((seq, 1))
                reserved -= 1 + self.spec.add(batch, seq)  # its draft tokens, if any
                width += 1
                continue
            budget = batch.capacity - batch.n - reserved
            if budget <= 0:
                continue
            end = min(seq.n_prompt, seq.n_past + budget)
            if seq.media is not None and (end := seq.media.text_end(seq.n_past, end)) <= seq.n_past:
                continue  # an image is next: decoded on its own by self.vision
            chunk = seq.tokens[seq.n_past : end]
            last = seq.n_past + len(chunk) == seq.n_prompt
            idx = batch.add(chunk, seq.n_past, seq.slot.seq_id, last)
            fed.append((seq, len(chunk)))
            if last:
                outs.append((seq, idx))
        if batch.n == 0:
            return
        batch.struct.n_tokens = batch.n
        td = time.perf_counter()
        rc = self.model.decode()
        td = time.perf_counter() - td
        self.spec.observe(batch.n, td, [n + len(s.spec.draft if s.spec else ()) for s, n in fed])
        if rc != 0:
            self._decode_failed(rc, [s for s, _ in fed])
            return
        for seq, n in fed:
            new = seq.tokens[seq.n_past : seq.n_past + n]
            seq.slot.cached.extend(new)
            seq.n_past += n
        for seq, idx in outs:
            if seq.spec is not None and seq.spec.draft:
                self.spec.verify(seq, idx, self._on_logits, lambda q: q.rid in self.active)
            else:
                self._on_logits(seq, idx)
        self.stats.record(max(width, 1), time.perf_counter() - t0, td)

    def _decode_failed(self, rc: int, seqs: list[Sequence]) -> None:
        if rc == 1:
            idle = sorted((s for s in self.slots if not s.busy and s.cached), key=lambda s: s.last_used)
            if idle:
                self.model.seq_rm(idle[0].seq_id)
                idle[0].cached = []
                return
            newest = max(self.active.values(), key=lambda s: s.rid)
            self._fail(newest, CorralError("the KV cache is full: no room for this request's tokens"))
            return
        for seq in seqs:
            self._fail(seq, CorralError(f"llama_decode failed with status {rc}"))

    def _fail(self, seq: Sequence, exc: CorralError) -> None:
        self.active.pop(seq.rid, None)
        self.model.seq_rm(seq.slot.seq_id)
        seq.slot.cached = []
        self._release(seq)
        self._send(seq.emit, Failure(exc))

    def _shift(self, seq: Sequence) -> bool:
        """Make room at num_ctx: context shift, or finish with "length". True if seq continues."""
        m = self.model
        keep = sl.keep_count(seq.params.options.num_keep, m.add_bos, self.num_ctx)
        if not seq.params.shift or not m.can_shift() or seq.params.options.num_predict == -2:
            self._finish(seq, "length")
            return False
        for other in self.slots if m.cfg.kv_unified else []:
            if other is seq.slot or sl.common_prefix(other.cached, seq.slot.cached) <= keep:
                continue
            if other.busy:
                self._finish(seq, "length")
                return False
            m.seq_rm(other.seq_id)
            other.cached = []
        n = sl.shift_discard(self.num_ctx, keep)
        sid = seq.slot.seq_id
        m.seq_rm(sid, keep, keep + n)
        m.seq_add(sid, keep + n, seq.n_past, -n)
        del seq.tokens[keep : keep + n]
        seq.n_past -= n
        seq.slot.cached = seq.tokens[: seq.n_past]
        return True

    # --- after decode ---------------------------------------------------------------------
    def _on_logits(self, seq: Sequence, idx: int) -> None:
        tok = seq.sampler.sample(idx)
        if seq.n_gen == 0:
            seq.t_first = time.perf_counter()
        seq.n_gen += 1
        if self.model.is_eog(tok):
            self._finish(seq, "stop")
            return
        lps: list[TokenLogprob] = []
        if seq.params.logprobs:
            lps.append(token_logprob(self.model, idx, tok, seq.params.top_logprobs))
        text = seq.stop.feed(seq.utf8.feed(self.model.piece(tok)))
        seq.tokens.append(tok)
        if text or lps:
            self._send(seq.emit, Chunk(text, lps))
        if seq.stop.stopped:
            self._finish(seq, "stop")
        elif seq.n_gen >= seq.limit:
            self._finish(seq, "length")
        else:
            seq.next_token = tok

    def _finish(self, seq: Sequence, reason: str) -> None:
        now = time.perf_counter()
        tail = "" if seq.stop.stopped else seq.stop.feed(seq.utf8.flush()) + seq.stop.flush()
        t_first = seq.t_first or now
        metrics = Metrics(
            prompt_eval_count=seq.n_prompt,
            prompt_cache_count=seq.n_cached,
            prompt_eval_duration=int((t_first - seq.t_seated) * 1e9),
            eval_count=seq.n_gen,
            eval_duration=int((now - t_first) * 1e9),
            context=[t for t in seq.tokens if t >= 0],  # image positions are not tokens
        )
        self.active.pop(seq.rid, None)
        self._release(seq)
        self._send(seq.emit, Chunk(tail, done=True, done_reason=reason, metrics=metrics))

    # --- introspection (loop thread) --------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "slots": [{"id": s.seq_id, "busy": s.busy, "cached": len(s.cached)} for s in self.slots],
            "active": len(self.active),
            "waiting": len(self.waiting),
            "num_ctx": self.num_ctx,
            "stats": self.stats.summary(),
            "speculative": self.spec.status(),
            **({"prompt_cache": self.cache.status()} if self.cache is not None else {}),
        }
