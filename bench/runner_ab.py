#!/usr/bin/env python3
"""A/B of runner flags, driven directly through the engine (no HTTP, less noise): SmolLM2,
2 threads, N concurrent greedy sequences of 128 tokens (ignore_eos). Variant A is the default
runner; variant B appends `--variant` to the runner's arguments (default: `--no-threadpool`).

    .venv/bin/python bench/runner_ab.py [--rounds 3] [--seqs 8] [--variant "--flash-attn on"]
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


async def measure(variant: list[str], seqs: int, tokens: int) -> float:
    original = proc.runner_argv

    def argv(*a: object, **k: object) -> list[str]:
        return [*original(*a, **k), *variant]  # type: ignore[arg-type]

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
    ap.add_argument("--variant", default="--no-threadpool")
    args = ap.parse_args()
    variants = {"default": [], args.variant: args.variant.split()}
    results: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for label, extra in variants.items():
            rate = asyncio.run(measure(extra, args.seqs, args.tokens))
            results[label].append(rate)
            print(f"{label:>20} seqs={args.seqs} aggregate {rate:6.1f} tok/s", flush=True)
    for label in variants:
        print(f"median {label}: {statistics.median(results[label]):.1f} tok/s")


if __name__ == "__main__":
    main()
