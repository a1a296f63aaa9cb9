"""The sampler as it was before sample-first grammar checking and top-k prefiltering (reference only).

One llama.cpp chain in llama.cpp's common order (grammar → penalties → top_k → typical → top_p →
min_p → temp → dist; temperature 0 → greedy) applied by `llama_sampler_sample` over the whole
vocabulary each token. Tests compare `corral.engine.llamacpp.sampling.SeqSampler` against it and
`bench/grammar_cost.py` measures both in one run.
"""

from __future__ import annotations

import math
from typing import Any

import llama_cpp as ll
import numpy as np

from corral.engine.llamacpp.cstruct import new
from corral.engine.llamacpp.model import LlamaModel
from corral.errors import BadRequestError
from corral.schemas.options import SampleOptions


def _penalties_active(o: SampleOptions) -> bool:
    return o.repeat_last_n != 0 and (o.repeat_penalty != 1.0 or o.presence_penalty != 0.0 or o.frequency_penalty != 0.0)


class LegacySampler:
    """The old `SeqSampler` (same constructor and methods)."""

    def __init__(self, model: LlamaModel, opts: SampleOptions, *, grammar: str | None, num_ctx: int,
                 ignore_eos: bool = False):
        self.model = model
        self.chain: Any = None
        self._penalties: Any = None
        self._banned = model.eog_tokens() if ignore_eos else []
        greedy = opts.temperature <= 0
        if greedy and not grammar and not _penalties_active(opts):
            return
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        self.chain = chain
        if self._banned:
            biases = (ll.llama_logit_bias * len(self._banned))(
                *[new(ll.llama_logit_bias, token=t, bias=-math.inf) for t in self._banned]
            )
            ll.llama_sampler_chain_add(
                chain, ll.llama_sampler_init_logit_bias(model.n_vocab, len(self._banned), biases)
            )
        if grammar:
            g = ll.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            if not g:
                self.free()
                raise BadRequestError("invalid grammar")
            ll.llama_sampler_chain_add(chain, g)
        if _penalties_active(opts):
            last_n = num_ctx if opts.repeat_last_n < 0 else opts.repeat_last_n
            self._penalties = ll.llama_sampler_init_penalties(
                model.n_vocab, last_n, opts.repeat_penalty, opts.frequency_penalty, opts.presence_penalty
            )
            ll.llama_sampler_chain_add(chain, self._penalties)
        if greedy:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return
        add = ll.llama_sampler_chain_add
        if opts.top_k > 0:
            add(chain, ll.llama_sampler_init_top_k(opts.top_k))
        if opts.typical_p < 1.0:
            add(chain, ll.llama_sampler_init_typical(opts.typical_p, 1))
        if opts.top_p < 1.0:
            add(chain, ll.llama_sampler_init_top_p(opts.top_p, 1))
        if opts.min_p > 0.0:
            add(chain, ll.llama_sampler_init_min_p(opts.min_p, 1))
        add(chain, ll.llama_sampler_init_temp(opts.temperature))
        seed = ll.LLAMA_DEFAULT_SEED if opts.seed < 0 else opts.seed & 0xFFFFFFFF
        add(chain, ll.llama_sampler_init_dist(seed))

    def accept_prompt(self, tokens: list[int]) -> None:
        if self._penalties is not None:
            for t in tokens:
                ll.llama_sampler_accept(self._penalties, t)

    def sample(self, idx: int) -> int:
        if self.chain is None:
            logits = self.model.logits(idx)
            if self._banned:
                logits[self._banned] = -np.inf
            return int(np.argmax(logits))
        return int(ll.llama_sampler_sample(self.chain, self.model.ctx, idx))

    def free(self) -> None:
        if self.chain is not None:
            ll.llama_sampler_free(self.chain)
            self.chain = None
            self._penalties = None
