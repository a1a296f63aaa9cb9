#!/usr/bin/env python3
"""Per-token cost of grammar-constrained decoding vs unconstrained, on SmolLM2-135M.

Loads the model once in corral's llama.cpp runner (2 threads, one sequence) and generates with the
same prompt and seed: unconstrained, `format: "json"` (corral.grammar.json_grammar) and a JSON
schema (corral.grammar.schema_to_gbnf). Reports ms/token from the runner's eval_duration/eval_count
(median over --repeat runs) and the overhead against unconstrained. Prints a table to stdout.

It also reports the isolated cost of the grammar sampler itself (`llama_sampler_apply` over the
whole vocabulary, replaying the tokens of a fixed valid output in-process), which does not depend
on machine load the way end-to-end decode timings do.

    .venv/bin/python bench/grammar_cost.py [--repeat 5] [--tokens 96] [--show]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.engine.base import GenerateParams, LoadSpec  # noqa: E402
from corral.engine.llamacpp import LlamaCppEngine  # noqa: E402
from corral.grammar import json_grammar, schema_to_gbnf  # noqa: E402
from corral.schemas.options import LoadOptions, SampleOptions  # noqa: E402
from tests.support import smollm2_path  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {
            "type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"]},
    },
    "required": ["name", "age", "tags", "address"],
}
PROMPT = ("<|im_start|>user\nDescribe a fictional person as JSON with name, age, tags and address."
          "<|im_end|>\n<|im_start|>assistant\n")


async def measure(runner: object, grammar: str | None, tokens: int, seed: int) -> tuple[float, int, str]:
    opts = SampleOptions(num_predict=tokens, seed=seed, temperature=0.7)
    text: list[str] = []
    ms = 0.0
    count = 0
    async for chunk in runner.generate(GenerateParams(prompt=PROMPT, options=opts, grammar=grammar)):  # type: ignore[attr-defined]
        text.append(chunk.text)
        if chunk.done and chunk.metrics is not None:
            count = chunk.metrics.eval_count
            ms = chunk.metrics.eval_duration / 1e6
    return ms / max(count, 1), count, "".join(text)


SAMPLE_OUTPUT = ('{\n  "name": "John Smith",\n  "age": 30,\n  "tags": ["red", "blue"],\n  "address": {\n'
                 '    "city": "Paris",\n    "zip": "75001"\n  }\n}')


def isolated(grammars: dict[str, str]) -> None:
    """ms per token of llama_sampler_apply(grammar) over the full vocabulary, along SAMPLE_OUTPUT."""
    import llama_cpp as ll

    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.vocab_only = True
    model = ll.llama_model_load_from_file(str(smollm2_path()).encode(), mp)
    vocab = ll.llama_model_get_vocab(model)
    n = ll.llama_vocab_n_tokens(vocab)
    raw = SAMPLE_OUTPUT.encode()
    buf = (ll.llama_token * 512)()
    tokens = list(buf[: ll.llama_tokenize(vocab, raw, len(raw), buf, 512, False, False)])
    cand = (ll.llama_token_data * n)()
    print(f"grammar sampler alone: {n} candidates per step, {len(tokens)} tokens of a valid output")
    for name, grammar in grammars.items():
        sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        times = []
        for tok in tokens:
            for i in range(n):
                cand[i].id, cand[i].logit, cand[i].p = i, 0.0, 0.0
            arr = ll.llama_token_data_array(cand, n, -1, False)
            t0 = time.perf_counter()
            ll.llama_sampler_apply(sampler, ctypes.byref(arr))
            times.append((time.perf_counter() - t0) * 1000)
            ll.llama_sampler_accept(sampler, tok)
        ll.llama_sampler_free(sampler)
        print(f"  {name:<14} mean {statistics.mean(times):6.2f} ms/token, median {statistics.median(times):6.2f},"
              f" max {max(times):6.2f}")
    ll.llama_model_free(model)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--show", action="store_true", help="print the last output of each case")
    args = ap.parse_args()
    engine = LlamaCppEngine(log_dir=Path(tempfile.mkdtemp(prefix="corral-bench-")))
    spec = LoadSpec(model_path=smollm2_path(), options=LoadOptions(num_ctx=1024, num_thread=2))
    runner = await engine.load(spec)
    cases = {"unconstrained": None, "format=json": json_grammar(), "json schema": schema_to_gbnf(SCHEMA)}
    isolated({k: v for k, v in cases.items() if v is not None})
    try:
        await measure(runner, None, 8, 0)  # warm-up
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in cases}
        samples: dict[str, str] = {}
        for i in range(args.repeat):
            for name, grammar in cases.items():
                per_tok, count, text = await measure(runner, grammar, args.tokens, 1000 + i)
                results[name].append((per_tok, count))
                samples[name] = text
    finally:
        await runner.close()
    base = statistics.median(p for p, _ in results["unconstrained"])
    print(f"SmolLM2-135M Q4_1, 2 threads, 1 sequence, num_predict={args.tokens}, {args.repeat} runs (median)")
    print(f"{'case':<16}{'ms/token':>10}{'tokens':>8}{'overhead':>10}")
    for name, rows in results.items():
        per = statistics.median(p for p, _ in rows)
        toks = statistics.median(c for _, c in rows)
        print(f"{name:<16}{per:>10.2f}{toks:>8.0f}{(per / base - 1) * 100:>9.1f}%")
    if args.show:
        for name, text in samples.items():
            print(f"--- {name}: {text!r}")


if __name__ == "__main__":
    asyncio.run(main())
