"""Faults and limits on dedicated real servers: queue overflow, disconnects, runner crashes, corrupt
models, two models at once, and the interactive REPL through a pty."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.ggufs import write_gguf
from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One parallel slot and a queue of 8, to make waiting and cancelling observable."""
    home = tmp_path_factory.mktemp("corral-limits")
    env = {"CORRAL_NUM_PARALLEL": "4", "CORRAL_MAX_QUEUE": "8", "CORRAL_CONTEXT_LENGTH": "1024"}
    with running_server(home, env) as srv:
        with httpx.Client(base_url=srv.url, timeout=300, trust_env=False) as c:
            assert c.post("/api/pull", json={"model": MODEL, "stream": False}).status_code == 200
        yield srv


def runner_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    return [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)
            if "corral.engine.llamacpp.runner" in " ".join(p.cmdline())]


def test_queue_overflow_gets_503_at_once_and_the_rest_complete(small_server: ServerProcess) -> None:
    # long enough (64 tokens at 4 parallel) that the whole burst arrives while every slot is busy
    body = {"model": MODEL, "prompt": "Say hello.", "stream": False, "options": {"num_predict": 64}}

    async def main() -> list[tuple[int, float, float]]:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=300, trust_env=False,
                                     limits=httpx.Limits(max_connections=64)) as c:
            await c.post("/api/generate", json=body)  # loaded

            async def one() -> tuple[int, float, float]:
                started = time.monotonic()
                r = await c.post("/api/generate", json=body)
                return r.status_code, started, time.monotonic()

            return await asyncio.gather(*[one() for _ in range(40)])

    results = asyncio.run(main())
    ok = [(s, e) for code, s, e in results if code == 200]
    busy = [(s, e) for code, s, e in results if code == 503]
    assert len(ok) + len(busy) == 40 and len(busy) >= 20
    first_done = min(e for _, e in ok)
    # while nothing had finished, at most 4 running + 8 queued could be admitted
    assert len([s for s, _ in ok if s < first_done]) <= 12
    assert max(e - s for s, e in busy) < 2.0  # rejected at once, not after waiting
    with httpx.Client(base_url=small_server.url, timeout=120, trust_env=False) as c:
        assert c.post("/api/generate", json=body).status_code == 200


def test_client_disconnect_frees_its_sequence(small_server: ServerProcess) -> None:
    long = {"model": MODEL, "prompt": "Write a very long essay about the sea.", "options": {"num_predict": 4000}}
    with httpx.Client(base_url=small_server.url, timeout=120, trust_env=False) as c:
        streams = []
        for _ in range(4):  # occupy every parallel slot, then walk away
            s = c.stream("POST", "/api/generate", json=long)
            r = s.__enter__()
            it = r.iter_lines()
            next(it)
            streams.append((s, r))
        for s, _ in streams:
            s.__exit__(None, None, None)
        started = time.monotonic()
        r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                          "options": {"num_predict": 4}})
        assert r.status_code == 200
        assert time.monotonic() - started < 15  # not stuck behind 4 x 4000 abandoned tokens


def test_runner_crash_gives_clear_error_and_next_request_reloads(small_server: ServerProcess) -> None:
    with httpx.Client(base_url=small_server.url, timeout=120, trust_env=False) as c:
        c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
        pids = runner_pids(small_server)
        assert pids
        with c.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Tell a long story.",
                                                     "options": {"num_predict": 2000}}) as r:
            lines = r.iter_lines()
            next(lines)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            rest = [json.loads(line) for line in lines if line]
        assert "model runner has unexpectedly stopped" in rest[-1]["error"]
        r2 = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                           "options": {"num_predict": 2}})
        assert r2.status_code == 200 and r2.json()["done"]
        assert set(runner_pids(small_server)).isdisjoint(pids)


def test_corrupt_model_fails_clearly_and_only_its_runner(small_server: ServerProcess, tmp_path: Path) -> None:
    bogus = write_gguf(tmp_path / "bogus.gguf")  # valid GGUF metadata, but not a loadable llama model
    with httpx.Client(base_url=small_server.url, timeout=120, trust_env=False) as c:
        digest = "sha256:" + __import__("hashlib").sha256(bogus.read_bytes()).hexdigest()
        assert c.post(f"/api/blobs/{digest}", content=bogus.read_bytes()).status_code == 201
        r = c.post("/api/create", json={"model": "bogus", "files": {"bogus.gguf": digest}, "stream": False})
        assert r.status_code == 200, r.text
        bad = c.post("/api/generate", json={"model": "bogus", "prompt": "hi", "stream": False})
        assert bad.status_code == 500
        assert "llama runner process has terminated" in bad.json()["error"]
        good = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                             "options": {"num_predict": 2}})
        assert good.status_code == 200


def test_two_models_loaded_at_once(small_server: ServerProcess) -> None:
    with httpx.Client(base_url=small_server.url, timeout=300, trust_env=False) as c:
        assert c.post("/api/pull", json={"model": "gemma3:270m", "stream": False}).status_code == 200
        for model in (MODEL, "gemma3:270m"):
            r = c.post("/api/chat", json={"model": model, "stream": False, "options": {"num_predict": 6},
                                          "messages": [{"role": "user", "content": "Hello!"}]})
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"].strip()
        loaded = {m["name"] for m in c.get("/api/ps").json()["models"]}
        assert {MODEL, "gemma3:270m"} <= loaded
        r = c.post("/api/generate", json={"model": "gemma3:270m", "keep_alive": 0})
        assert r.status_code == 200
        assert "gemma3:270m" not in {m["name"] for m in c.get("/api/ps").json()["models"]}


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_repl_through_a_pty(small_server: ServerProcess) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: the interactive CLI on a terminal
        os.execve(sys.executable, [sys.executable, "-m", "corral", "run", MODEL], small_server.env)
    try:
        assert b">>> " in read_until(fd, b">>> ", 60)
        os.write(fd, b"/set parameter num_predict 6\r")
        assert b"Set parameter 'num_predict' to '6'" in read_until(fd, b"to '6'", 10)
        read_until(fd, b">>> ", 5)
        os.write(fd, b"/set system You answer in French.\r")
        assert b"Set system message." in read_until(fd, b"Set system message.", 10)
        read_until(fd, b">>> ", 5)
        os.write(fd, b"/show template\r")
        assert b"<|im_start|>" in read_until(fd, b"<|im_start|>", 10)
        read_until(fd, b">>> ", 5)
        os.write(fd, b"Hello there\r")
        answer = read_until(fd, b">>> ", 60)
        assert len(answer.strip()) > len(b"Hello there")
        os.write(fd, b"/bye\r")
        read_until(fd, b"\x00", 5)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_one_shot_run_with_piped_stdin_and_verbose(small_server: ServerProcess) -> None:
    proc = subprocess.run([sys.executable, "-m", "corral", "run", MODEL, "--verbose"], input="Say OK.",
                          env=small_server.env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "eval rate:" in proc.stderr and "prompt eval count:" in proc.stderr


def test_sigterm_ends_streams_with_an_error_line_and_stops_runners(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", {"CORRAL_NUM_PARALLEL": "2"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
            assert c.post("/api/pull", json={"model": MODEL, "stream": False}).status_code == 200
            with c.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Tell a long story.",
                                                         "options": {"num_predict": 4000}}) as r:
                lines = r.iter_lines()
                next(lines)
                runners = runner_pids(server)
                assert runners and server.proc is not None
                os.kill(server.proc.pid, signal.SIGTERM)
                rest = [json.loads(line) for line in lines if line]
        assert rest[-1] == {"error": "server is shutting down"}
        assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in runners)
    finally:
        server.stop()


def test_cli_ps_stop_and_cp(small_server: ServerProcess) -> None:
    with httpx.Client(base_url=small_server.url, timeout=120, trust_env=False) as c:
        c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
    ps = small_server.cli("ps")
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert any(row.startswith(MODEL) and "100% CPU" in row for row in rows)
    stopped = small_server.cli("stop", MODEL)
    assert stopped.returncode == 0, stopped.stderr
    assert MODEL not in small_server.cli("ps").stdout
    missing = small_server.cli("stop", MODEL)
    assert missing.returncode == 1 and f'couldn\'t find model "{MODEL}" to stop' in missing.stderr
    copied = small_server.cli("cp", MODEL, "smol-copy")
    assert copied.returncode == 0 and "copied 'smollm2:135m' to 'smol-copy'" in copied.stdout
    assert "smol-copy:latest" in small_server.cli("list").stdout
    assert small_server.cli("rm", "smol-copy").returncode == 0
    version = small_server.cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("corral version is ")


def test_runners_exit_when_their_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home").start()
    try:
        with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
            assert c.post("/api/pull", json={"model": MODEL, "stream": False}).status_code == 200
            c.post("/api/generate", json={"model": MODEL, "stream": False})
        runners = runner_pids(server)
        assert runners and server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)  # no chance to clean up
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        alive = runners
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in runners if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not alive
    finally:
        server.stop()
