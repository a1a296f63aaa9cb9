"""Decode in this process (no runner): one sequence, one model, for sampler tests and benchmarks.

Loads with `extra_bufts=False` (no weight repacking): CPUs that advertise AMX inside a VM that traps
it die with SIGILL on the first decode otherwise (the engine retries a runner that way; code that
decodes in-process must choose it up front). One thread by default: on a shared, oversubscribed
machine llama.cpp's spinning threadpool made two threads 8x slower than one (600 vs 71 ms/token).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.engine.llamacpp.model import ContextConfig, LlamaModel


class Sampler(Protocol):
    def sample(self, idx: int) -> int: ...
    def free(self) -> None: ...


@dataclass
class Run:
    tokens: list[int] = field(default_factory=list)
    sample_s: list[float] = field(default_factory=list)  # time in sampler.sample, per token
    step_s: list[float] = field(default_factory=list)  # sample + decode, per token


@contextmanager
def loaded(path: Path, n_ctx: int = 1024, threads: int = 1) -> Iterator[LlamaModel]:
    cfg = ContextConfig(n_ctx=n_ctx, n_seq=1, n_batch=512, threads=threads)
    model = LlamaModel(str(path), cfg, extra_bufts=False)
    try:
        yield model
    finally:
        model.close()


def generate(model: LlamaModel, sampler: Sampler, prompt: list[int], n: int) -> Run:
    """Decode `prompt` on sequence 0 (cleared first), then sample up to `n` tokens (stops at EOG)."""
    model.seq_rm(0)
    b = model.batch
    b.clear()
    idx = b.add(prompt, 0, 0, want_last=True)
    b.struct.n_tokens = b.n
    assert model.decode() == 0
    run = Run()
    pos = len(prompt)
    for _ in range(n):
        t0 = time.perf_counter()
        tok = sampler.sample(idx)
        t1 = time.perf_counter()
        run.tokens.append(tok)
        run.sample_s.append(t1 - t0)
        if model.is_eog(tok):
            break
        b.clear()
        idx = b.add_one(tok, pos, 0)
        b.struct.n_tokens = b.n
        assert model.decode() == 0
        pos += 1
        run.step_s.append(time.perf_counter() - t0)
    return run
