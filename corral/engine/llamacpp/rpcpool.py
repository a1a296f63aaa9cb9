"""The server's view of its RPC workers (`CORRAL_RPC_WORKERS`): which ones a new runner gets.

The server process never runs ggml's RPC client (it aborts its process when a worker dies); it
only probes workers over plain sockets with timeouts (`rpc.probe`). At each load the workers that
answer, and that no live runner of this server holds (a worker serves one client at a time), go to
the new runner with their shares of the split; the others are logged and left out. So after a
worker dies and takes its runner down, the next load simply goes without it, and a worker that
comes back is used again by the next load after it answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError, RunnerStoppedError

from . import rpc
from .rpcserver import find_rpc_lib, rpc_lib_dirs

LOST_SETTLE_S = 2.0  # how long a runner's death may wait for a dying worker's port to close
LOST_PROBE_EVERY_S = 0.2

log = logging.getLogger(__name__)
GiB = 1024**3


@dataclass(frozen=True)
class Choice:
    """The workers one runner connects to, and the split shares (this machine first) or ()."""

    workers: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()

    def argv(self) -> list[str]:
        out: list[str] = []
        for w in self.workers:
            out += ["--rpc", w]
        if self.workers and self.shares:
            out += ["--rpc-split", ",".join(f"{s:g}" for s in self.shares)]
        return out


class WorkerPool:
    def __init__(self, workers: Iterable[str], shares: tuple[float, ...] = (), *, lib_dir: Path | None = None,
                 probe_timeout: float = rpc.PROBE_TIMEOUT) -> None:
        self.workers = tuple(workers)
        self.shares = shares
        self.probe_timeout = probe_timeout
        self.free: dict[str, int] = {}  # last free memory each worker reported
        self.lib_dir = lib_dir

    @classmethod
    def start(cls, workers: Iterable[str], shares: tuple[float, ...] = (), *,
              environ: Mapping[str, str] | None = None) -> WorkerPool:
        """At server start: find the RPC build runners will use, and say what each worker reports."""
        env = os.environ if environ is None else environ
        pool = cls(workers, shares, lib_dir=find_rpc_lib(env.get("LLAMA_CPP_LIB_PATH") or None))
        log.info("RPC workers %s; runners use the llama.cpp libraries in %s", ", ".join(pool.workers), pool.lib_dir)
        for ep in pool.workers:
            try:
                info = rpc.probe(ep, pool.probe_timeout)
            except rpc.WorkerUnavailable as exc:
                log.warning("%s (it is probed again at each model load)", exc.message)
                continue
            pool.free[ep] = info.free
            log.info("RPC worker %s: protocol %s, %d device(s), %.1f GiB free", ep,
                     ".".join(map(str, info.version)), len(info.memory), info.free / GiB)
        return pool

    def runner_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a runner process: the backend's build if it has RPC, else the RPC build."""
        env = dict(os.environ if base is None else base)
        current = env.get("LLAMA_CPP_LIB_PATH")
        if (current and rpc_lib_dirs([Path(current)])) or self.lib_dir is None:
            return env
        env["LLAMA_CPP_LIB_PATH"] = env["MTMD_CPP_LIB"] = str(self.lib_dir)
        return env

    async def choose(self, in_use: Iterable[str] = ()) -> Choice:
        """Probe the workers no live runner holds; the ones that answer go to the next runner."""
        held = set(in_use)
        candidates = [w for w in self.workers if w not in held]
        for w in self.workers:
            if w in held:
                log.info("RPC worker %s is held by another loaded model; loading without it", w)
        usable = []
        for ep, result in zip(candidates, await rpc.probe_all(candidates, self.probe_timeout), strict=True):
            if isinstance(result, rpc.WorkerUnavailable):
                log.warning("%s; loading without it", result.message)
                self.free.pop(ep, None)
            else:
                self.free[ep] = result.free
                usable.append(ep)
        workers, shares = rpc.select(usable, self.workers, self.shares)
        return Choice(workers, shares)

    def offloadable(self, total: int) -> int:
        """Bytes of a model of `total` bytes (weights and KV) that the workers would take, from their
        last reported memory: what the scheduler need not find on this machine."""
        if not self.workers:
            return 0
        if self.shares:
            remote = [s for w, s in zip(self.workers, self.shares[1:], strict=True) if w in self.free]
            return int(total * sum(remote) / sum(self.shares))
        room = sum(max(f - rpc.RESERVE_BYTES, 0) for f in self.free.values())
        return min(total, room)

    async def any_gone(self, workers: tuple[str, ...]) -> bool:
        """After a runner died while loading with `workers`: is one of them gone (worth a retry)?"""
        return bool(workers) and bool(await rpc.refusing(workers))

    async def lost_error(self, workers: tuple[str, ...], settle: float = LOST_SETTLE_S) -> CorralError | None:
        """The error for a runner that died while using `workers`, naming those that are gone.

        A killed worker's port can still accept for a moment after its runner noticed (its process
        group is still being torn down), so a probe where every worker answers is repeated for up
        to `settle` seconds before the death is put down to something else."""
        if not workers:
            return None
        deadline = asyncio.get_running_loop().time() + settle
        while not (gone := await rpc.refusing(workers)) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(LOST_PROBE_EVERY_S)
        if not gone:
            return None
        names = ", ".join(gone)
        return RunnerStoppedError(
            f"model runner has stopped: lost the connection to RPC worker {names} (it stopped or is "
            "unreachable); the next request reloads the model without it"
        )


def in_use(runners: Iterable[object]) -> set[str]:
    """Workers held by live runners (duck-typed: `alive` and `rpc_workers`)."""
    held: set[str] = set()
    for r in runners:
        if getattr(r, "alive", False):
            held.update(getattr(r, "rpc_workers", ()))
    return held
