#!/usr/bin/env python3
"""Benchmark corral against llama.cpp's own llama-server on the same model, in one run.

Builds llama-server from the llama.cpp vendored by the pinned llama-cpp-python sdist (cached outside
the repo, see build_llama_server.sh), then alternates the two servers on SmolLM2-135M with the same
settings (2 threads, 8 parallel sequences, 2048 tokens of context per sequence) and drives both with
`../shared/bench/loadgen.py` over the OpenAI API (so both honour `ignore_eos` and produce exactly
`--max-tokens` tokens). Results go to bench/out/*.json and a summary table to stdout; the figures
written down in bench/RESULTS.md come from this script.

    .venv/bin/python bench/run_bench.py [--repeat 3] [--scenarios decode,multiturn,prefill]

The `team` scenario (issue 13) is its own server shape: 4 parallel sequences of 4096 tokens, 16
conversations of 6 turns at once (64 tokens per answer), so that conversations outnumber sequences
and each turn's history must come back from a prompt cache (llama-server: its `--cache-ram`
default; corral: CORRAL_CACHE_RAM default).

    .venv/bin/python bench/run_bench.py --scenarios team
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT.parent / "shared" / "bench" / "loadgen.py"
OUT = ROOT / "bench" / "out"
PARALLEL = 8
CTX_PER_SEQ = 2048
THREADS = 2
# scenario -> (parallel sequences, context per sequence); the others run with PARALLEL, CTX_PER_SEQ
SHAPES = {"team": (4, 4096)}
sys.path.insert(0, str(ROOT))


def smollm2() -> Path:
    from tests.support import smollm2_path

    return smollm2_path()


def wait_ready(url: str, timeout: float = 120, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


class Peak:
    """Samples the RSS of a process tree (server + runner children) every 0.25 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def sample(self) -> int:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs if p.is_running())
        except psutil.Error:
            return self.peak
        self.peak = max(self.peak, rss)
        return rss


def start_llama_server(binary: str, port: int, model: Path, *, repack: bool = True,
                       shape: tuple[int, int] = (PARALLEL, CTX_PER_SEQ)) -> subprocess.Popen[bytes]:
    cmd = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", str(shape[0]),
           "-c", str(shape[0] * shape[1]), "-t", str(THREADS), "--no-webui"]
    if not repack:
        cmd.append("--no-repack")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def start_ready_llama_server(binary: str, port: int, model: Path,
                             shape: tuple[int, int] = (PARALLEL, CTX_PER_SEQ)) -> subprocess.Popen[bytes]:
    """llama-server, under the rule corral's engine follows: when the warm-up dies on an illegal
    instruction (a CPU that advertises AMX it cannot run, seen in VMs), run without repacking.
    BENCH_NO_REPACK=1 forces it (llama-server's warm-up can pass and a later batch still trap)."""
    if os.environ.get("BENCH_NO_REPACK"):
        proc = start_llama_server(binary, port, model, repack=False, shape=shape)
        wait_ready(f"http://127.0.0.1:{port}/health", proc=proc)
        return proc
    proc = start_llama_server(binary, port, model, shape=shape)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc=proc)
        return proc
    except RuntimeError:
        if proc.poll() != -signal.SIGILL:
            raise
    print("llama-server died on an illegal instruction: running it with --no-repack, as corral does", flush=True)
    proc = start_llama_server(binary, port, model, repack=False, shape=shape)
    wait_ready(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc


def start_corral(port: int, home: Path, shape: tuple[int, int] = (PARALLEL, CTX_PER_SEQ)) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}",
           "CORRAL_NUM_PARALLEL": str(shape[0]), "CORRAL_CONTEXT_LENGTH": str(shape[1]),
           "CORRAL_NUM_THREAD": str(THREADS), "CORRAL_KEEP_ALIVE": "-1"}
    log = (home / "server.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "corral", "serve"], env=env, stdout=log, stderr=log,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def loadgen(url: str, model: str, scenario: str, label: str, repeat: int, offset: int) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{label}-{scenario}.json"
    cmd = [sys.executable, str(LOADGEN), "--url", url, "--api", "openai", "--model", model,
           "--scenario", scenario, "--json", str(out), "--label", label, "--quiet",
           "--prompt-offset", str(offset), "--max-seconds", "900"]
    if scenario == "decode":
        cmd += ["--concurrency", "1,4,8", "--repeat", str(repeat)]
    elif scenario == "multiturn":
        cmd += ["--concurrency", "1", "--turns", "6"]
    elif scenario == "prefill":
        cmd += ["--concurrency", "1", "--requests-per-level", "3", "--max-tokens", "32"]
    elif scenario == "team":  # issue 13: more conversations than sequences
        cmd[cmd.index("--scenario") + 1] = "multiturn"
        cmd += ["--concurrency", "16", "--turns", "6", "--max-tokens", "64", "--timeout", "900"]
    subprocess.run(cmd, check=False)
    return out


def run_server(kind: str, scenarios: list[str], repeat: int, binary: str, model: Path, offset: int
               ) -> dict[str, object]:
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    started = time.monotonic()
    shape = SHAPES.get(scenarios[0], (PARALLEL, CTX_PER_SEQ))
    if kind == "llama-server":
        proc = start_ready_llama_server(binary, port, model, shape)
        name = "smollm2"
    else:
        proc = start_corral(port, home, shape)
        wait_ready(f"http://127.0.0.1:{port}/")
        httpx.post(f"http://127.0.0.1:{port}/api/pull", json={"model": "smollm2:135m", "stream": False},
                   timeout=300, trust_env=False)
        name = "smollm2:135m"
    idle_rss = Peak(proc.pid)
    idle = idle_rss.sample()
    idle_rss.stop()
    load_started = time.monotonic()
    if kind == "corral":
        httpx.post(f"http://127.0.0.1:{port}/api/generate", json={"model": name}, timeout=120, trust_env=False)
    load_s = time.monotonic() - load_started
    results: dict[str, object] = {"startup_s": time.monotonic() - started, "load_s": load_s,
                                  "rss_no_model": idle}
    peak = Peak(proc.pid)
    try:
        for scenario in scenarios:
            out = loadgen(f"http://127.0.0.1:{port}", name, scenario, kind, repeat, offset)
            results[scenario] = str(out)
    finally:
        results["peak_rss"] = peak.stop()
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scenarios", default="decode,multiturn,prefill")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times")
    ap.add_argument("--servers", default="llama-server,corral", help="which servers to run (an A/B of corral "
                    "settings: --servers corral with CORRAL_* in the environment)")
    args = ap.parse_args()
    binary = subprocess.run([str(ROOT / "bench" / "build_llama_server.sh")], capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    model = smollm2()
    scenarios = args.scenarios.split(",")
    summary: dict[str, list[dict[str, object]]] = {"llama-server": [], "corral": []}
    # scenarios with their own server shape (SHAPES) get servers of their own
    groups = [[s for s in scenarios if s not in SHAPES]] + [[s] for s in scenarios if s in SHAPES]
    for rnd in range(args.rounds):
        for group in (g for g in groups if g):
            for kind in args.servers.split(","):
                summary[kind].append(run_server(kind, group, args.repeat, binary, model, 1000 * (rnd + 1)))
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    for scenario in scenarios:
        files = [str(OUT / f"{k}-{scenario}.json") for k in args.servers.split(",")]
        subprocess.run([sys.executable, str(LOADGEN), "--compare", *files], check=False)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
