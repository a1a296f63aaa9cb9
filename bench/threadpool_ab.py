#!/usr/bin/env python3
"""A/B: the runner with and without a persistent ggml threadpool, driven directly through the
engine (no HTTP), SmolLM2, 2 threads, N concurrent greedy sequences of 128 tokens (ignore_eos).

    .venv/bin/python bench/threadpool_ab.py [--rounds 3] [--seqs 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.engine.base import GenerateParams, LoadSpec  # noqa: E402
from corral.engine.llamacpp import proc  # noqa: E402
from corral.schemas.options import LoadOptions, SampleOptions  # noqa: E402
from tests.support import smollm2_path  # noqa: E402


async def measure(pool: bool, seqs: int, tokens: int) -> float:
    original = proc.runner_argv

    def argv(*a: object, **k: object) -> list[str]:
        out = original(*a, **k)  # type: ignore[arg-type]
        return out if pool else [*out, "--no-threadpool"]

    proc.runner_argv = argv  # type: ignore[assignment]
    engine = proc.LlamaCppEngine(log_dir=Path(tempfile.mkdtemp()))
    spec = LoadSpec(model_path=smollm2_path(), options=LoadOptions(num_ctx=2048, num_thread=2), num_parallel=seqs)
    runner = await engine.load(spec)
    proc.runner_argv = original
    try:
        opts = SampleOptions(temperature=0, num_predict=tokens)

        async def one(i: int) -> int:
            n = 0
            params = GenerateParams(prompt=f"Task {i}: describe the sea.", options=opts, ignore_eos=True)
            async for chunk in runner.generate(params):
                if chunk.done and chunk.metrics:
                    n = chunk.metrics.eval_count
            return n

        await one(999)  # warm-up
        started = time.monotonic()
        counts = await asyncio.gather(*[one(i) for i in range(seqs)])
        return sum(counts) / (time.monotonic() - started)
    finally:
        await runner.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    results: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for pool in (False, True):
            rate = asyncio.run(measure(pool, args.seqs, args.tokens))
            results[pool].append(rate)
            print(f"threadpool={pool!s:5} seqs={args.seqs} aggregate {rate:6.1f} tok/s", flush=True)
    for pool in (False, True):
        print(f"median threadpool={pool}: {statistics.median(results[pool]):.1f} tok/s")


if __name__ == "__main__":
    main()
