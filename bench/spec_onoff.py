#!/usr/bin/env python3
"""Drafting on against drafting off on the loadgen `decode` scenario (issue 14), paired.

On a shared 2-core VM two runs of the same server minutes apart differ by 10-20 %, more than the
effect measured. So both servers run at once (idle while the other works) and every round sends the
same prompts to each, at each level, in alternating order. The ratio is taken per round. The summary
gives the median of those ratios and the ratio of the sums.

    BENCH_NO_REPACK=1 .venv/bin/python bench/spec_onoff.py [--rounds 6] [--levels 1,4,8]

Servers: corral with `CORRAL_SPECULATIVE=on` and `off`, the `run_bench.py` shape (8 parallel
sequences of 2048 tokens, 2 threads), SmolLM2-135M; 128 tokens per request, greedy, `ignore_eos`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb

MODES = ("on", "off")


def start(mode: str) -> tuple[int, subprocess.Popen[bytes]]:
    port = rb._free_port()
    os.environ["CORRAL_SPECULATIVE"] = mode
    try:
        proc = rb.start_corral(port, Path(tempfile.mkdtemp(prefix=f"bench-onoff-{mode}-")))
    finally:
        os.environ.pop("CORRAL_SPECULATIVE", None)
    rb.wait_ready(f"http://127.0.0.1:{port}/")
    httpx.post(f"http://127.0.0.1:{port}/api/pull", json={"model": "smollm2:135m", "stream": False},
               timeout=300, trust_env=False)
    return port, proc


def level(port: int, concurrency: int, offset: int) -> float:
    """Aggregate output tok/s of one loadgen level (default request count: max(4, 2 * c))."""
    out = rb.OUT / f"onoff-{port}.json"
    rb.OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(rb.LOADGEN), "--url", f"http://127.0.0.1:{port}", "--api", "openai",
                    "--model", "smollm2:135m", "--scenario", "decode", "--json", str(out), "--quiet",
                    "--prompt-offset", str(offset), "--max-seconds", "600", "--concurrency", str(concurrency)],
                   check=False, stdout=subprocess.DEVNULL)
    return float(json.loads(out.read_text())["levels"][0]["summary"]["agg_output_tps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--levels", default="1,4,8")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    servers = {m: start(m) for m in MODES}
    got: dict[tuple[str, int], list[float]] = {(m, c): [] for m in MODES for c in levels}
    try:
        for r in range(a.rounds):
            for c in levels:
                for m in MODES if r % 2 == 0 else reversed(MODES):
                    got[(m, c)].append(level(servers[m][0], c, 2000 + 100 * r))
                print(f"round {r} c={c}: on {got[('on', c)][-1]:.1f}  off {got[('off', c)][-1]:.1f} tok/s", flush=True)
    finally:
        for _, proc in servers.values():
            rb.stop(proc)
    print("\n| concurrency | on / off per round | median | sum on / sum off |\n|---|---|---|---|")
    for c in levels:
        on, off = got[("on", c)], got[("off", c)]
        ratios = [x / y for x, y in zip(on, off, strict=True)]
        print(f"| {c} | {' '.join(f'{q:.2f}' for q in ratios)} | {statistics.median(ratios):.2f}x "
              f"| {sum(on) / sum(off):.3f}x |")


if __name__ == "__main__":
    main()
