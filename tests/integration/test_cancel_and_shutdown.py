"""Abandoned non-streaming requests and SIGTERM, on dedicated real servers with one model runner.

A non-streaming request whose client goes away must stop generating at once (its parallel slot is
the next user's), on every route; SIGTERM must end open streams with an error line, answer queued
and in-flight requests with 503, and take the server and its runners down within about 2 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)
MODEL = "smollm2:135m"
LONG = 20000  # tokens: minutes of decoding on any machine here, far beyond the test's patience
PROMPT = "Tell a long story about the sea."
SHUTTING_DOWN = "server is shutting down"


def runner_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    return [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)
            if "corral.engine.llamacpp.runner" in " ".join(p.cmdline())]


def pull_and_load(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=300, trust_env=False) as c:
        assert c.post("/api/pull", json={"model": MODEL, "stream": False}).status_code == 200
        r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                          "options": {"num_predict": 1}})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One parallel sequence: an abandoned request that kept generating would block everyone."""
    home = tmp_path_factory.mktemp("corral-one-slot")
    env = {"CORRAL_NUM_PARALLEL": "1", "CORRAL_CONTEXT_LENGTH": "1024", "CORRAL_KEEP_ALIVE": "10m"}
    with running_server(home, env) as srv:
        pull_and_load(srv)
        yield srv


USER = [{"role": "user", "content": PROMPT}]
ABANDONED: dict[str, tuple[str, dict[str, Any]]] = {
    "generate": ("/api/generate", {"prompt": PROMPT, "stream": False, "options": {"num_predict": LONG}}),
    "chat": ("/api/chat", {"messages": USER, "stream": False, "options": {"num_predict": LONG}}),
    "chat_completions": ("/v1/chat/completions", {"messages": USER, "max_tokens": LONG}),
    "completions": ("/v1/completions", {"prompt": PROMPT, "max_tokens": LONG}),
    "messages": ("/v1/messages", {"messages": USER, "max_tokens": LONG}),
    "responses": ("/v1/responses", {"input": PROMPT, "max_output_tokens": LONG}),
}


@pytest.mark.parametrize("route", list(ABANDONED))
def test_non_streaming_request_stops_when_its_client_times_out(one_slot: ServerProcess, route: str) -> None:
    path, body = ABANDONED[route]
    with httpx.Client(base_url=one_slot.url, timeout=1.0, trust_env=False) as c, pytest.raises(httpx.ReadTimeout):
        c.post(path, json={"model": MODEL, "ignore_eos": True, **body})
    started = time.monotonic()
    with httpx.Client(base_url=one_slot.url, timeout=60, trust_env=False) as c:
        try:
            r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                              "options": {"num_predict": 4}})
        except httpx.ReadTimeout:
            pytest.fail(f"{route}: the next request was still waiting after 60s: the abandoned one kept its slot")
    waited = time.monotonic() - started
    log.info("%s: the next request finished %.2fs after the first client gave up", route, waited)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["eval_count"] <= 4
    # the abandoned request had minutes of decoding left: the slot must have come back at once
    assert waited < 20, f"the next request waited {waited:.1f}s behind an abandoned one"


async def wait_for_queue(c: httpx.AsyncClient, depth: int, timeout: float = 60) -> None:
    """Until /metrics reports `depth` requests waiting for a slot (the scheduler's own count)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (await c.get("/metrics")).text
        m = re.search(r"^corral_queue_depth (\S+)$", text, re.MULTILINE)
        if m and float(m.group(1)) >= depth:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {depth} queued requests")


async def shutdown_scenario(server: ServerProcess) -> dict[str, Any]:
    """Two slots busy (a stream and a non-streaming request), two requests queued, then SIGTERM."""
    assert server.proc is not None
    long_native = {"model": MODEL, "prompt": PROMPT, "ignore_eos": True, "options": {"num_predict": LONG}}
    long_openai = {"model": MODEL, "messages": USER, "max_tokens": LONG, "ignore_eos": True}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False, limits=limits) as c:
        in_flight = asyncio.create_task(c.post("/v1/chat/completions", json=long_openai))
        async with c.stream("POST", "/api/generate", json=long_native) as stream:
            lines = stream.aiter_lines()
            first = json.loads(await anext(lines))
            queued_stream = asyncio.create_task(c.post("/api/chat", json={"model": MODEL, "messages": USER}))
            queued = asyncio.create_task(c.post("/api/generate", json={**long_native, "stream": False}))
            await wait_for_queue(c, 2)  # both slots held (the stream and the non-streaming request)
            runners = runner_pids(server)
            os.kill(server.proc.pid, signal.SIGTERM)
            sent = time.monotonic()
            rest = [json.loads(line) async for line in lines if line]
        responses = await asyncio.gather(in_flight, queued_stream, queued)
        answered = time.monotonic() - sent
    return {"first": first, "rest": rest, "responses": responses, "runners": runners, "sent": sent,
            "answered": answered}


def wait_exit(server: ServerProcess, runners: list[int], sent: float, timeout: float = 20) -> tuple[float, int]:
    """Seconds from SIGTERM until the server and its runners are all gone; the server's exit code."""
    assert server.proc is not None
    deadline = sent + timeout
    while time.monotonic() < deadline:
        alive = [p for p in runners if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if server.proc.poll() is not None and not alive:
            return time.monotonic() - sent, server.proc.returncode
        time.sleep(0.02)
    raise AssertionError(f"server or runners still alive {timeout}s after SIGTERM")


def test_sigterm_ends_streams_fails_queued_and_exits_fast(tmp_path: Path) -> None:
    env = {"CORRAL_NUM_PARALLEL": "2", "CORRAL_CONTEXT_LENGTH": "1024"}
    server = ServerProcess(tmp_path / "home", env).start()
    try:
        pull_and_load(server)
        got = asyncio.run(shutdown_scenario(server))
        exited, code = wait_exit(server, got["runners"], got["sent"])
        log.info("SIGTERM: requests answered after %.2fs, server and runners gone after %.2fs",
                 got["answered"], exited)
        print(f"SIGTERM: requests answered after {got['answered']:.2f}s, all gone after {exited:.2f}s")
        assert got["first"]["done"] is False and got["runners"]
        assert got["rest"] and got["rest"][-1] == {"error": SHUTTING_DOWN}
        assert all("error" not in line for line in got["rest"][:-1])
        in_flight, queued_stream, queued = got["responses"]
        assert in_flight.status_code == 503, in_flight.text
        assert in_flight.json()["error"]["message"] == SHUTTING_DOWN
        for r in (queued_stream, queued):
            assert r.status_code == 503, r.text
            assert r.json() == {"error": SHUTTING_DOWN}
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert exited < 3.0, f"took {exited:.2f}s to exit after SIGTERM (target: 2s)"
    finally:
        server.stop()
