#!/usr/bin/env python3
"""Speculative decoding (issue 14): corral's n-gram drafts against llama-server's, in one run.

The code-edit request: a file of Python in the prompt and an instruction to change one name, the
answer opened with a code fence so that SmolLM2-135M writes the file back (an editor applying a
change). Greedy, 256 tokens, concurrency 1, 2 threads, the same server shape as run_bench.py
(8 sequences of 2048 tokens). Raw prompts on both sides: corral's /api/generate with raw=true,
llama-server's /completion; the rate is the client's: tokens after the first over the time from
the first streamed token to the last. Servers, each `--repeat` times (median kept):

- llama-server without drafts, with `--spec-type ngram-simple` and with `--spec-type ngram-mod`
- corral with CORRAL_SPECULATIVE=off and with its default (n-gram drafts on)

llama-server follows run_bench.py's rule on CPUs that advertise AMX they cannot run (BENCH_NO_REPACK).

    .venv/bin/python bench/spec_bench.py [--repeat 3] [--servers ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # bench/ is a directory of scripts

CODE = '''import json
import os


def load_settings(path):
    """Read the settings file and return a dictionary."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    settings = {}
    for key, value in data.items():
        if isinstance(value, str):
            value = value.strip()
        settings[key.lower()] = value
    return settings


def save_settings(path, settings):
    """Write the settings dictionary to the file."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2, sort_keys=True)


def merge_settings(base, override):
    """Return a new dictionary with override applied on top of base."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = value
    return merged
'''
SYSTEM = (
    "You are a code editor. Apply the requested change and output the complete updated file in one "
    "code block, nothing else."
)
USER = f"Rename the function merge_settings to combine_settings.\n\n```python\n{CODE}```"
PROMPT = (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n"
    "<|im_start|>assistant\n```python\n"
)
TOKENS = 256
SERVERS = {
    "llama-server": [],
    "llama-server-ngram-simple": ["--spec-type", "ngram-simple"],
    "llama-server-ngram-mod": ["--spec-type", "ngram-mod"],
    "corral-off": {"CORRAL_SPECULATIVE": "off"},
    "corral": {},
}


def _rate(first: float, last: float, n: int) -> float:
    return (n - 1) / (last - first) if n > 1 and last > first else 0.0


def one_llama(port: int, tokens: int = TOKENS) -> dict[str, Any]:
    body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "stream": True, "cache_prompt": False}
    first = last = 0.0
    text: list[str] = []
    final: dict[str, Any] = {}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/completion", json=body, timeout=600, trust_env=False) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev.get("content"):
                last = time.perf_counter()
                first = first or last
                text.append(ev["content"])
            if ev.get("stop"):
                final = ev
    n = int(final.get("timings", {}).get("predicted_n", 0))
    return {"tokens": n, "tok_s": _rate(first, last, n), "text": "".join(text)}


def one_corral(port: int, tokens: int = TOKENS) -> dict[str, Any]:
    body = {"model": "smollm2:135m", "prompt": PROMPT, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": tokens}}
    first = last = 0.0
    text: list[str] = []
    final: dict[str, Any] = {}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/api/generate", json=body, timeout=600, trust_env=False) as r:
        for line in r.iter_lines():
            ev = json.loads(line)
            if ev.get("response"):
                last = time.perf_counter()
                first = first or last
                text.append(ev["response"])
            if ev.get("done"):
                final = ev
    n = int(final.get("eval_count", 0))
    return {"tokens": n, "tok_s": _rate(first, last, n), "text": "".join(text)}


def start_llama(binary: str, port: int, model: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    """llama-server with `extra` flags, under run_bench.py's rule: without weight repacking when
    BENCH_NO_REPACK is set or when the repacked warm-up dies on an illegal instruction."""

    def start(repack: bool) -> subprocess.Popen[bytes]:
        cmd = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", str(rb.PARALLEL),
               "-c", str(rb.PARALLEL * rb.CTX_PER_SEQ), "-t", str(rb.THREADS), "--no-webui", *extra]
        cmd += [] if repack else ["--no-repack"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        rb.wait_ready(f"http://127.0.0.1:{port}/health", proc=proc)
        return proc

    if os.environ.get("BENCH_NO_REPACK"):
        return start(False)
    try:
        return start(True)
    except RuntimeError:
        return start(False)


def run(kind: str, repeat: int, binary: str, model: Path) -> dict[str, Any]:
    port = rb._free_port()
    home = Path(tempfile.mkdtemp(prefix=f"bench-spec-{kind}-"))
    setting = SERVERS[kind]
    if kind.startswith("llama-server"):
        proc = start_llama(binary, port, model, list(setting) if isinstance(setting, list) else [])
        ask = one_llama
    else:
        env = dict(setting) if isinstance(setting, dict) else {}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            proc = rb.start_corral(port, home)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        rb.wait_ready(f"http://127.0.0.1:{port}/")
        httpx.post(f"http://127.0.0.1:{port}/api/pull", json={"model": "smollm2:135m", "stream": False},
                   timeout=300, trust_env=False)
        ask = one_corral
    try:
        ask(port, 8)  # warm-up (load, first prompt)
        runs = [ask(port) for _ in range(repeat)]
    finally:
        rb.stop(proc)
    rates = [r["tok_s"] for r in runs]
    return {"tok_s": statistics.median(rates), "runs": rates, "tokens": runs[-1]["tokens"], "text": runs[-1]["text"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--servers", default=",".join(SERVERS))
    args = ap.parse_args()
    binary = subprocess.run([str(rb.ROOT / "bench" / "build_llama_server.sh")], capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    model = rb.smollm2()
    results = {kind: run(kind, args.repeat, binary, model) for kind in args.servers.split(",")}
    rb.OUT.mkdir(parents=True, exist_ok=True)
    (rb.OUT / "spec-code-edit.json").write_text(json.dumps(results, indent=2))
    base = results.get("llama-server-ngram-mod", {}).get("tok_s") or 0
    for kind, r in results.items():
        ratio = f"{r['tok_s'] / base:.2f}x ngram-mod" if base else ""
        print(f"{kind:28s} {r['tok_s']:7.1f} tok/s  runs {[round(x, 1) for x in r['runs']]}  "
              f"{r['tokens']} tokens  {ratio}")


if __name__ == "__main__":
    main()
