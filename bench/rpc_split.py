"""Decode speed of a model split over two `corral worker`s on loopback, against the same model local.

On loopback the network costs nothing, so what this measures is the RPC protocol itself: one round
trip per worker boundary per decoded token. Every run uses the same RPC-enabled llama.cpp build, and
one compute thread wherever the layers are (the runner's and each worker's), so the splits differ
only in where the work happens, not in how many cores do it. Splits are interleaved per repeat so
that a change in the machine's load falls on all of them.

    .venv/bin/python bench/rpc_split.py [--tokens 128] [--repeat 2]

Prints one line per split: tokens/s (eval_count / eval_duration of the server's answer) and the
ratio to the local run. The store is a temporary corral home with smollm2:135m imported offline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import ServerProcess, running_server  # noqa: E402

try:
    from tests.integration.test_rpc_workers import LIB, server_env, workers
except BaseException as exc:  # pytest.skip at import: no RPC build
    raise SystemExit(f"rpc_split: {exc}") from None

SPLITS = ["local", "0,1,0", "0,1,1", "1,1,1", "0,0,1"]


def tokens_per_second(url: str, n: int) -> float:
    with httpx.Client(base_url=url, timeout=600, trust_env=False) as c:
        body = {"model": "smollm2:135m", "prompt": "Tell a long story about a lighthouse keeper.", "stream": False,
                "options": {"temperature": 0, "num_predict": n, "seed": 1}}
        c.post("/api/generate", json={**body, "options": {**body["options"], "num_predict": 2}})  # load
        r = c.post("/api/generate", json=body).json()
    return float(r["eval_count"]) / (float(r["eval_duration"]) / 1e9)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    assert LIB is not None
    with tempfile.TemporaryDirectory() as tmp:
        base = ServerProcess(Path(tmp) / "store").start()
        try:
            with httpx.Client(base_url=base.url, timeout=300, trust_env=False) as c:
                assert c.post("/api/pull", json={"model": "smollm2:135m", "stream": False}).status_code == 200
        finally:
            base.stop()
        runs: dict[str, list[float]] = {split: [] for split in SPLITS}
        with workers(Path(tmp)) as pair:
            for i in range(args.repeat):
                for split in SPLITS:
                    endpoints = [] if split == "local" else [w.endpoint for w in pair]
                    env = {**server_env(base, endpoints, "" if split == "local" else split), "CORRAL_NUM_THREAD": "1"}
                    with running_server(Path(tmp) / f"home-{split}-{i}", env) as srv:
                        runs[split].append(tokens_per_second(srv.url, args.tokens))
        local = statistics.median(runs["local"])
        for split in SPLITS:
            median = statistics.median(runs[split])
            shown = ", ".join(f"{r:.1f}" for r in runs[split])
            print(f"{split:>8}: {median:7.1f} tok/s  ({median / local:.2f}x local)  runs: {shown}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
