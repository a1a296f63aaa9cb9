"""Parent side of the llama.cpp engine: spawn runner processes and talk to them.

Owns `LlamaCppEngine` (load a `LoadSpec` into a child process, estimate its memory) and
`LlamaCppRunner` (the `Runner` protocol over the child's Unix socket: one connection per request,
closing it cancels). A child that dies during load is a `CorralError` carrying its last stderr
lines; a child that dies mid-request is a `RunnerStoppedError`. Does not schedule or evict; the
scheduler decides when to load and close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from corral.engine.base import Chunk, EmbedResult, GenerateParams, LoadSpec, RerankResult
from corral.errors import CorralError, RunnerStoppedError
from corral.fit import Placement

from . import protocol as proto
from .backend import Accelerators, Backend, placement_argv
from .rpcpool import Choice, WorkerPool, in_use
from .tuning import RunnerTuning

log = logging.getLogger(__name__)


class RunnerCrashedError(CorralError):
    """A runner process that exited while loading; `signal` is the signal that killed it, if any."""

    def __init__(self, message: str, *, signal: int | None = None) -> None:
        super().__init__(message)
        self.signal = signal

COMPUTE_OVERHEAD = 96 * 1024 * 1024  # measured: SmolLM2 RSS minus weights minus KV, rounded up
_STDIO_LIMIT = 64 * 1024 * 1024


def _kv_bytes_per_token(path: Path) -> int:
    from corral.gguf import read_gguf

    return int(read_gguf(path).kv_bytes_per_token())


def runner_argv(spec: LoadSpec, socket_path: str, python: str, max_line: int = proto.MAX_LINE) -> list[str]:
    o = spec.options
    argv = [
        python,
        "-m",
        "corral.engine.llamacpp.runner",
        "--model",
        str(spec.model_path),
        "--socket",
        socket_path,
        "--num-ctx",
        str(o.num_ctx),
        "--num-parallel",
        str(max(spec.num_parallel, 1)),
        "--num-batch",
        str(o.num_batch),
        "--threads",
        str(o.num_thread),
        "--max-line",
        str(max_line),
    ]
    if spec.embedding:
        argv.append("--embedding")
    if o.use_mmap is not None:
        argv += ["--mmap", "on" if o.use_mmap else "off"]
    for projector in spec.projectors:
        argv += ["--mmproj", str(projector)]
    if spec.draft is not None:
        argv += ["--draft", str(spec.draft)]
    for adapter in spec.adapters:
        argv += ["--lora", str(adapter)]
    return argv


class LlamaCppEngine(Accelerators):
    """Loads models into runner processes (one process per loaded model), with the layers that fit
    offloaded to the backend's accelerators (`Accelerators`: devices and fit)."""

    def __init__(
        self,
        *,
        log_dir: Path,
        load_timeout: float = 300.0,
        python: str = sys.executable,
        max_line: int = proto.MAX_LINE,
        cache_ram: int = 0,
        cache_disk: Path | None = None,
        cache_disk_max: int = 0,
        backend: Backend | None = None,
        gpu_overhead: int = 0,
        gpu_memory_limit: int = 0,
        rpc: WorkerPool | None = None,
        tuning: RunnerTuning | None = None,
    ) -> None:
        Accelerators.__init__(self, backend, overhead=gpu_overhead, limit=gpu_memory_limit, tuning=tuning)
        self.log_dir = Path(log_dir)
        self.load_timeout = load_timeout
        self.python = python
        self.max_line = max_line
        # the prompt cache of each runner: bytes of memory, and an optional disk tier
        self.cache_ram = max(cache_ram, 0)
        self.cache_disk = cache_disk
        self.cache_disk_max = cache_disk_max
        self.extra_bufts = True  # weight repacking (AMX/AVX-512 kernels); off after a SIGILL at load
        self.rpc = rpc  # CORRAL_RPC_WORKERS: runners offload layers to these llama.cpp RPC workers
        self._rpc_choice = Choice()
        self._runners: list[LlamaCppRunner] = []

    def estimate(self, spec: LoadSpec) -> int:
        size = Path(spec.model_path).stat().st_size + sum(Path(p).stat().st_size for p in spec.projectors)
        size += Path(spec.draft).stat().st_size if spec.draft else 0  # its KV: small beside the model's
        try:
            per_token = _kv_bytes_per_token(Path(spec.model_path))
        except Exception:
            per_token = 0
        ctx = spec.options.num_ctx * (1 if spec.embedding else max(spec.num_parallel, 1))
        cache = 0 if spec.embedding else self.cache_ram  # the prompt cache may fill its bound
        remote = self.rpc.offloadable(size + per_token * ctx) if self.rpc else 0  # what RPC workers take
        return size + per_token * ctx + COMPUTE_OVERHEAD + cache - remote

    async def load(self, spec: LoadSpec, placement: Placement | None = None) -> LlamaCppRunner:
        if placement is None and self.backend.devices:
            placement = self.place(spec)
        try:
            return await self._spawn(spec, placement)
        except RunnerCrashedError as exc:
            if exc.signal != signal.SIGILL or not self.extra_bufts:
                raise
        # The CPU advertises kernels (AMX seen in a VM) that the system cannot run: the runner's
        # warm-up decode died on an illegal instruction. Plain CPU buffers work everywhere.
        log.warning("llama runner died on an illegal instruction; loading without weight repacking from now on")
        self.extra_bufts = False
        return await self._spawn(spec, placement)

    def _cache_args(self, spec: LoadSpec) -> list[str]:
        if spec.embedding:
            return []
        args = ["--cache-ram", str(self.cache_ram)]
        if self.cache_disk is not None and self.cache_disk_max > 0:
            args += ["--cache-disk", str(self.cache_disk), "--cache-disk-max", str(self.cache_disk_max)]
        return args

    async def _spawn(self, spec: LoadSpec, placement: Placement | None = None) -> LlamaCppRunner:
        """Start a runner; one that died loading because an RPC worker went away is started again
        (the workers are probed anew, so it goes without that one)."""
        try:
            return await self._spawn_once(spec, placement)
        except RunnerCrashedError as exc:
            if self.rpc is None or exc.signal == signal.SIGILL or not await self.rpc.any_gone(self._rpc_choice.workers):
                raise
            log.warning("an RPC worker went away while a model was loading; loading again without it")
        return await self._spawn_once(spec, placement)

    async def _spawn_once(self, spec: LoadSpec, placement: Placement | None = None) -> LlamaCppRunner:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sock_dir = tempfile.mkdtemp(prefix="corral-r-")
        sock = os.path.join(sock_dir, "s")
        argv = runner_argv(spec, sock, self.python, self.max_line) + self.tuning.argv()
        if not self.extra_bufts:
            argv.append("--no-extra-bufts")
        argv += self._cache_args(spec) + placement_argv(placement)
        self._runners = [r for r in self._runners if r.alive]
        self._rpc_choice = await self.rpc.choose(in_use(self._runners)) if self.rpc else Choice()
        argv += self._rpc_choice.argv()
        env = self.backend.env() if self.backend.lib is not None else None
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=self.rpc.runner_env(env) if self.rpc else env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_STDIO_LIMIT,
        )
        log_path = self.log_dir / f"runner-{proc.pid}.log"
        runner = LlamaCppRunner(
            proc, sock, sock_dir, log_path, estimate=self.estimate(spec), max_line=self.max_line
        )
        runner.placement = placement
        runner.rpc_workers, runner.rpc_pool = self._rpc_choice.workers, self.rpc
        self._runners.append(runner)
        try:
            await asyncio.wait_for(runner.wait_ready(), timeout=self.load_timeout)
        except TimeoutError:
            await runner.close()
            raise CorralError(f"timed out waiting for llama runner to start ({self.load_timeout:.0f}s)") from None
        except BaseException:
            await runner.close()
            raise
        return runner


class LlamaCppRunner:
    """A loaded model in a child process (implements `corral.engine.base.Runner`)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        sock: str,
        sock_dir: str,
        log_path: Path,
        *,
        estimate: int,
        max_line: int = proto.MAX_LINE,
    ) -> None:
        self.proc = proc
        self.max_line = max_line
        self.socket_path = sock
        self._sock_dir = sock_dir
        self.log_path = log_path
        self._estimate = estimate
        self._tail: deque[str] = deque(maxlen=20)
        self._closed = False
        self.info: dict[str, Any] = {}
        self.rpc_workers: tuple[str, ...] = ()  # the RPC workers this runner offloads to
        self.rpc_pool: WorkerPool | None = None
        self.placement: Placement | None = None  # the layers the server asked to offload
        self._stderr_task = asyncio.ensure_future(self._pump_stderr())
        self._stdout_task: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def alive(self) -> bool:
        return not self._closed and self.proc.returncode is None

    @property
    def memory_bytes(self) -> int:
        device = sum(self.device_bytes.values()) if self.info else 0
        if device > 0:  # what llama.cpp allocated (a device's memory may be host memory too)
            return int((self.info.get("offload") or {}).get("host_bytes", 0)) + device
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return self._estimate

    @property
    def device_bytes(self) -> dict[str, int]:
        """Bytes on each accelerator: as llama.cpp reported them after loading, else as planned."""
        reported = (self.info.get("offload") or {}).get("device_bytes")
        if isinstance(reported, dict):
            return {str(k): int(v) for k, v in reported.items()}
        return dict(self.placement.device_bytes) if self.placement is not None else {}

    @property
    def vram_bytes(self) -> int:
        """`/api/ps` `size_vram`: the device buffers; all of `memory_bytes` when every layer is
        offloaded (llama.cpp keeps the token embeddings in host memory even then: 100% GPU)."""
        device = sum(self.device_bytes.values()) if self.info else 0
        offload = self.info.get("offload") or {}
        layers, total = int(offload.get("layers", 0)), int(offload.get("total_layers", 0))
        return self.memory_bytes if device and total and layers >= total else device

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log_path, "ab") as f:
            while line := await self.proc.stderr.readline():
                f.write(line)
                f.flush()
                text = line.decode(errors="replace").strip()
                if text:
                    self._tail.append(text)

    async def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    def _exit_error(self) -> RunnerCrashedError:
        code = self.proc.returncode
        status = f"exit status {code}" if code is not None and code >= 0 else f"signal: {-(code or 0)}"
        lines = "\n".join(list(self._tail)[-5:])
        message = f"llama runner process has terminated: {status}: {lines}".rstrip(": ")
        return RunnerCrashedError(message, signal=-code if code is not None and code < 0 else None)

    async def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.proc.wait()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stderr_task, timeout=2.0)
                raise self._exit_error()
            with contextlib.suppress(CorralError):
                obj = proto.decode(line)
                if obj.get("ready"):
                    self.info = obj
                    self._stdout_task = asyncio.ensure_future(self._drain_stdout())
                    return

    async def _open(self, req: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        line = proto.encode(req)
        if len(line) > self.max_line:
            raise proto.too_large(len(line), self.max_line)
        if not self.alive:
            raise RunnerStoppedError()
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=self.max_line)
        except OSError:
            raise RunnerStoppedError() from None
        try:
            writer.write(line)
            await writer.drain()
        except OSError:
            await self._close(writer)
            raise await self._lost() from None
        return reader, writer

    async def _lost(self) -> CorralError:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=2.0)
        if self.proc.returncode is not None:
            lost = await self.rpc_pool.lost_error(self.rpc_workers) if self.rpc_pool else None
            return lost or RunnerStoppedError()
        return CorralError("an error was encountered while running the model: unexpected EOF")

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        """The runner's next reply; a closed or broken socket means the runner is gone."""
        try:
            line = await reader.readline()
        except OSError:
            line = b""
        except ValueError:  # longer than the limit: the runner is fine, the reply is not usable
            raise CorralError(f"the model runner's reply is larger than the limit ({self.max_line} bytes)") from None
        if not line:
            raise await self._lost()
        return proto.decode(line)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        reader, writer = await self._open(proto.generate_request(params))
        try:
            while True:
                chunk = proto.chunk_from_event(await self._read(reader))
                yield chunk
                if chunk.done:
                    return
        finally:
            await self._close(writer)

    async def _request(self, req: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await self._open(req)
        try:
            obj = await self._read(reader)
            proto.raise_if_error(obj)
            return obj
        finally:
            await self._close(writer)

    async def embed(self, inputs: list[str], *, truncate: bool = True) -> EmbedResult:
        obj = await self._request({"op": "embed", "inputs": inputs, "truncate": truncate})
        return EmbedResult(embeddings=obj["embeddings"], prompt_eval_count=int(obj.get("prompt_eval_count", 0)))

    async def rerank(self, query: str, documents: list[str]) -> RerankResult:
        obj = await self._request({"op": "rerank", "query": query, "documents": documents})
        return RerankResult(scores=[float(s) for s in obj["scores"]], prompt_eval_count=int(obj["prompt_eval_count"]))

    async def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        req = {"op": "tokenize", "text": text, "add_special": add_special, "parse_special": parse_special}
        return [int(t) for t in (await self._request(req))["tokens"]]

    async def detokenize(self, tokens: list[int]) -> str:
        return str((await self._request({"op": "detokenize", "tokens": tokens}))["text"])

    async def pieces(self, tokens: list[int]) -> list[bytes]:
        return [base64.b64decode(p) for p in (await self._request({"op": "pieces", "tokens": tokens}))["pieces"]]

    async def status(self) -> dict[str, Any]:
        return await self._request({"op": "status"})

    async def health(self) -> bool:
        try:
            return (await self._request({"op": "health"})).get("status") == "ok"
        except CorralError:
            return False

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                _, w = await asyncio.wait_for(asyncio.open_unix_connection(self.socket_path), timeout=1.0)
                w.write(proto.encode({"op": "shutdown"}))
                await w.drain()
                w.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._stderr_task, timeout=2.0)
        shutil.rmtree(self._sock_dir, ignore_errors=True)
