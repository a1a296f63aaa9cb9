"""A model split over `corral worker` processes on loopback (issue 17: llama.cpp RPC workers).

Needs a llama.cpp built with -DGGML_RPC=ON (scripts/build_backend.sh cpu-rpc); without one every
test here skips at once and says so. Each server uses that build's libraries for its runners (the
baseline too, so "same output" compares the same kernels), the session server's store, and two
workers started per test module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.engine.llamacpp import rpc
from corral.engine.llamacpp.rpcserver import find_rpc_lib
from corral.errors import CorralError
from tests.support import ServerProcess, free_port, running_server

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
UNITS = 31  # SmolLM2-135M: 30 repeating layers + the output layer


def _rpc_lib() -> Path | None:
    try:
        return find_rpc_lib()
    except CorralError:
        return None


LIB = _rpc_lib()
if LIB is None:
    pytest.skip("no llama.cpp build with RPC support (libggml-rpc.so): run scripts/build_backend.sh cpu-rpc",
                allow_module_level=True)
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
PROMPT = "Name three colours and say one thing about each."


class Worker:
    """A `corral worker` process on a loopback port."""

    def __init__(self, log_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = log_dir / f"worker-{self.port}.log"
        argv = [sys.executable, "-m", "corral", "worker", "--port", str(self.port), "--lib-dir", str(LIB),
                "--threads", "1", *extra]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(rpc.WorkerUnavailable):
                self.info = rpc.probe(self.endpoint, timeout=2.0)
                return
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def workers(log_dir: Path, n: int = 2) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(n):
            started.append(Worker(log_dir))
        yield started
    finally:
        for w in started:
            w.kill()


def server_env(server: ServerProcess, endpoints: list[str], split: str = "") -> dict[str, str]:
    env = {
        "CORRAL_MODELS": str(server.home / "models"),
        "CORRAL_NOPRUNE": "1",
        "CORRAL_NUM_PARALLEL": "1",
        "CORRAL_CONTEXT_LENGTH": "512",
        "CORRAL_KEEP_ALIVE": "10m",
        "CORRAL_BACKEND": "cpu",
        "LLAMA_CPP_LIB_PATH": str(LIB),
    }
    if endpoints:
        env["CORRAL_RPC_WORKERS"] = ",".join(endpoints)
    if split:
        env["CORRAL_RPC_SPLIT"] = split
    return env


def generate(url: str, **options: Any) -> str:
    with httpx.Client(base_url=url, timeout=300, trust_env=False) as c:
        r = c.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                          "options": {**GREEDY, **options}})
        assert r.status_code == 200, r.text
        return str(r.json()["response"])


def ps_rpc(url: str) -> dict[str, Any] | None:
    models = httpx.get(url + "/api/ps", timeout=30, trust_env=False).json()["models"]
    assert len(models) == 1
    rpc_info = models[0].get("rpc")
    return rpc_info if isinstance(rpc_info, dict) else None


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    with workers(tmp_path_factory.mktemp("rpc-workers")) as ws:
        yield ws


@pytest.fixture(scope="module")
def local_answer(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    with running_server(tmp_path_factory.mktemp("rpc-local"), server_env(server, [])) as srv:
        answer = generate(srv.url)
        assert ps_rpc(srv.url) is None
    assert answer.strip()
    return answer


# (split, expected layers on this machine): every layer on one worker, on both, and with this machine
SPLITS = [("0,1,0", 0), ("0,0,1", 0), ("0,1,1", 0), ("1,1,1", UNITS - round(UNITS * 2 / 3)),
          ("3,1,2", UNITS - round(UNITS / 2)), ("", 0)]


@pytest.mark.parametrize("split, local_layers", SPLITS, ids=[s or "by-memory" for s, _ in SPLITS])
def test_split_over_two_workers_gives_the_local_greedy_output(
    server: ServerProcess, pair: list[Worker], local_answer: str, tmp_path: Path, split: str, local_layers: int
) -> None:
    endpoints = [w.endpoint for w in pair]
    with running_server(tmp_path / "home", server_env(server, endpoints, split)) as srv:
        assert generate(srv.url) == local_answer
        report = ps_rpc(srv.url)
        ps = srv.cli("ps")
    assert report is not None, "the model did not go to the workers"
    shares = [float(x) for x in split.split(",")] if split else [0.0, 1.0, 1.0]
    used = [ep for ep, share in zip(endpoints, shares[1:], strict=True) if share > 0]
    assert [w["endpoint"] for w in report["workers"]] == used
    assert report["layers"] == UNITS and report["local_layers"] == local_layers
    assert sum(w["layers"] for w in report["workers"]) == UNITS - local_layers
    assert all(w["layers"] > 0 for w in report["workers"])
    assert ps.returncode == 0 and "RPC" in ps.stdout and used[0] in ps.stdout, ps.stdout + ps.stderr


def test_worker_mem_is_what_it_reports(tmp_path: Path) -> None:
    w = Worker(tmp_path, "--mem", "300")
    try:
        assert w.info.memory == ((300 << 20, 300 << 20),)
    finally:
        w.kill()


def test_a_worker_killed_mid_stream_ends_that_stream_and_the_server_goes_on(
    server: ServerProcess, tmp_path: Path
) -> None:
    with workers(tmp_path) as (a, b), running_server(
        tmp_path / "home", server_env(server, [a.endpoint, b.endpoint], "0,1,1")
    ) as srv, httpx.Client(base_url=srv.url, timeout=300, trust_env=False) as c:
        generate(srv.url, num_predict=2)  # loaded on both workers
        with c.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Tell a very long story.",
                                                     "options": {"num_predict": 2000, "temperature": 0}}) as r:
            lines = r.iter_lines()
            first = json.loads(next(lines))
            assert "response" in first
            b.kill()
            t0 = time.monotonic()
            rest = [json.loads(line) for line in lines if line]
            ended_in = time.monotonic() - t0
        assert "error" in rest[-1], rest[-3:]
        assert b.endpoint in rest[-1]["error"] and "RPC worker" in rest[-1]["error"], rest[-1]
        assert ended_in < 30
        again = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                              "options": {"num_predict": 4}})
        assert again.status_code == 200, again.text
        report = ps_rpc(srv.url)
        assert report is not None and [w["endpoint"] for w in report["workers"]] == [a.endpoint]
        metrics = c.get("/metrics").text
        assert any(line.startswith("corral_runner_restarts_total{") and not line.endswith(" 0.0")
                   for line in metrics.splitlines()), metrics
