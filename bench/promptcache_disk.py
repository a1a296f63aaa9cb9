#!/usr/bin/env python3
"""The prompt cache's disk tier after `corral stop` (issue 13): turn 7 of a long conversation.

Runs a 6-turn conversation on corral with CORRAL_CACHE_DISK set, stops the model (`corral stop`:
the runner and its memory are gone), then sends turn 7 and records how many prompt tokens were
evaluated and the time to its first token. The same turn 7 on a fresh server without the disk tier
is the cold start it is compared with. SmolLM2-135M, 2 threads, 4096 tokens of context.

    .venv/bin/python bench/promptcache_disk.py      (results: bench/out/promptcache-disk.json)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MODEL = "smollm2:135m"
sys.path.insert(0, str(ROOT))

from bench.run_bench import _free_port, stop, wait_ready  # noqa: E402

FOLLOWUPS = ["Tell me more.", "Why is that?", "Give an example.", "Summarize so far.", "What else?",
             "How would you explain it to a child?", "And the conclusion?"]
OPENING = ("Here are my notes on the history of bridges, from stone arches to suspension spans. " * 40
           + "What are the three most important ideas in them?")


def serve(home: Path, port: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_NUM_PARALLEL": "1",
           "CORRAL_CONTEXT_LENGTH": "4096", "CORRAL_NUM_THREAD": "2", "CORRAL_KEEP_ALIVE": "-1", **extra}
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "corral", "serve"], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/", proc=proc)
    httpx.post(f"http://127.0.0.1:{port}/api/pull", json={"model": MODEL, "stream": False}, timeout=300,
               trust_env=False)
    return proc


def turn(c: httpx.Client, messages: list[dict[str, str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = c.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                  "options": {"num_predict": 64, "temperature": 0}})
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    body["wall_s"] = time.perf_counter() - t0
    return body


def conversation(c: httpx.Client, turns: int) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": OPENING}]
    for t in range(turns):
        body = turn(c, messages)
        messages += [body["message"], {"role": "user", "content": FOLLOWUPS[t % len(FOLLOWUPS)]}]
    return messages


def figures(body: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_tokens": body["prompt_eval_count"], "cached_tokens": body.get("prompt_cache_count", 0),
            "evaluated": body["prompt_eval_count"] - body.get("prompt_cache_count", 0),
            "prompt_eval_s": body["prompt_eval_duration"] / 1e9, "load_s": body.get("load_duration", 0) / 1e9,
            "wall_s": body["wall_s"]}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    for kind in ("disk", "cold"):
        home = Path(tempfile.mkdtemp(prefix=f"bench-pc-{kind}-"))
        port = _free_port()
        extra = {"CORRAL_CACHE_DISK": str(home / "kv")} if kind == "disk" else {"CORRAL_CACHE_RAM": "0"}
        proc = serve(home, port, extra)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600, trust_env=False) as c:
                messages = conversation(c, 6)
                env = {**os.environ, "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_HOME": str(home)}
                subprocess.run([sys.executable, "-m", "corral", "stop", MODEL], env=env, check=True)
                if kind == "cold":  # the runner is reloaded first, so that both turn 7s pay the same load
                    c.post("/api/generate", json={"model": MODEL}).raise_for_status()
                result[kind] = figures(turn(c, messages))
        finally:
            stop(proc)
            shutil.rmtree(home, ignore_errors=True)
    (OUT / "promptcache-disk.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
