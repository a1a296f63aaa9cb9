"""A draft model in the runner's process (Modelfile DRAFT): a smaller model of the same vocabulary
whose greedy continuation of each sequence is verified by the main model (`spec.py`).

Owns the draft model, its context (one KV stream per sequence, like the main context) and, per
sequence, the tokens its KV holds. Each step it brings every drafting sequence up to date (the
tokens the main model accepted since, in one batched decode per chunk), then decodes `k` greedy
tokens for all of them together, `k` small decodes in all. A sequence whose tokens it no longer
holds (a context shift, a new request on the slot) is caught up from the longest common prefix.
Used only on the batching thread. Does not verify or emit: the main model's sampler decides.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import llama_cpp as ll
import numpy as np

from corral.errors import CorralError

from .model import Batch, ContextConfig, LlamaModel, context_params, model_params
from .slots import common_prefix

log = logging.getLogger(__name__)
VOCAB_SAMPLE = 512  # token texts compared between the two vocabularies


class DraftModel:
    """The draft model of a runner; `close()` frees it."""

    def __init__(self, path: str, target: LlamaModel, *, extra_bufts: bool = True) -> None:
        cfg = target.cfg
        self.model = ll.llama_model_load_from_file(path.encode(), model_params(extra_bufts=extra_bufts))
        if not self.model:
            raise CorralError(f"unable to load the draft model: {path}")
        self.ctx: Any = None
        try:
            self.vocab = ll.llama_model_get_vocab(self.model)
            self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
            _check_vocab(self, target)
            dcfg = ContextConfig(n_ctx=cfg.n_ctx, n_seq=cfg.n_seq, n_batch=cfg.n_batch, threads=cfg.threads,
                                 flash_attn=cfg.flash_attn)
            self.ctx = ll.llama_init_from_model(self.model, context_params(dcfg, pooling=-1))
            if not self.ctx:
                raise CorralError("unable to create the draft model's context (out of memory?)")
        except CorralError:
            self.close()
            raise
        if target.threadpool is not None:
            target.threadpool.attach(self.ctx)  # one pool: the two contexts never decode at once
        self.mem = ll.llama_get_memory(self.ctx)
        self.num_ctx = cfg.n_ctx // max(cfg.n_seq, 1)
        self.batch = Batch(cfg.n_batch)
        self.held: list[list[int]] = [[] for _ in range(cfg.n_seq)]  # tokens each stream's KV holds
        self._warmup()

    def _warmup(self) -> None:
        """A 2-token decode at load, as for the main model: a kernel this CPU cannot run (SIGILL)
        fails the load, where the engine retries without weight repacking."""
        b = self.batch
        b.clear()
        b.add([0, 0], 0, 0, True)
        b.struct.n_tokens = b.n
        ll.llama_decode(self.ctx, b.struct)
        ll.llama_memory_clear(self.mem, True)

    def draft(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """Greedy drafts of up to k tokens for each (seq_id, tokens, k): the continuation of
        `tokens` (whose last token the main model has not decoded yet)."""
        live = [(sid, toks, min(k, self.num_ctx - len(toks))) for sid, toks, k in wants]
        live = [w for w in live if w[2] > 0 and self._catch_up(w[0], w[1])]
        out: dict[int, list[int]] = {sid: [] for sid, _, _ in wants}
        step = 0
        while live:
            b = self.batch
            b.clear()
            rows = []
            for sid, toks, _k in live:
                feed = toks[len(self.held[sid]) :] if step == 0 else [out[sid][-1]]
                rows.append(b.add(feed, len(self.held[sid]), sid, True))
            b.struct.n_tokens = b.n
            if ll.llama_decode(self.ctx, b.struct) != 0:
                self._forget([sid for sid, _, _ in live])
                break
            for (sid, toks, _k), row in zip(live, rows, strict=True):
                self.held[sid] += toks[len(self.held[sid]) :] if step == 0 else [out[sid][-1]]
                logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
                out[sid].append(int(np.argmax(logits)))
            step += 1
            live = [w for w in live if len(out[w[0]]) < w[2]]
        return [out[sid] for sid, _, _ in wants]

    def _catch_up(self, sid: int, tokens: list[int]) -> bool:
        """Bring stream `sid` to all of `tokens` but the last (decoded with the first draft step);
        False when it cannot draft for them (image positions)."""
        held = self.held[sid]
        keep = min(common_prefix(held, tokens), len(tokens) - 1)
        if keep < len(held):
            ll.llama_memory_seq_rm(self.mem, sid, keep, -1)
            del held[keep:]
        missing = tokens[keep:-1]
        if any(t < 0 for t in missing):
            return False
        b = self.batch
        for i in range(0, len(missing), b.capacity):
            chunk = missing[i : i + b.capacity]
            b.clear()
            b.add(chunk, len(held), sid, False)
            b.struct.n_tokens = b.n
            if ll.llama_decode(self.ctx, b.struct) != 0:
                self._forget([sid])
                return False
            held += chunk
        return tokens[-1] >= 0

    def _forget(self, sids: list[int]) -> None:
        for sid in sids:
            ll.llama_memory_seq_rm(self.mem, sid, -1, -1)
            self.held[sid] = []

    def close(self) -> None:
        if self.ctx is not None:
            ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None


def _check_vocab(draft: DraftModel, target: LlamaModel) -> None:
    """The draft must speak the main model's tokens: same size, same texts (a sample of ids)."""
    if draft.n_vocab != target.n_vocab:
        raise CorralError(
            f"the draft model's vocabulary has {draft.n_vocab} tokens, the model's {target.n_vocab}: "
            "a draft model must share the model's tokenizer"
        )
    out = ctypes.create_string_buffer(256)
    for t in range(0, target.n_vocab, max(target.n_vocab // VOCAB_SAMPLE, 1)):
        n = ll.llama_token_to_piece(draft.vocab, t, out, 256, 0, True)
        if out.raw[: max(n, 0)] != target.piece(t, special=True)[:256]:
            raise CorralError(
                f"the draft model's token {t} differs from the model's: a draft model must share the model's tokenizer"
            )
