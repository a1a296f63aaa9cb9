"""The scheduler: which runners are loaded, who may use them, and when they go away (spec §9).

Owns the loaded-runner table, the bounded wait queue, memory-based admission and eviction,
keep-alive expiry and reloads when load-time options change. It sees models only as `ModelRef`s
(a blob path and a `LoadSpec`) and engines only through `corral.engine.base`.

Differences from Ollama, on purpose: the queue bound applies to every waiting request, including
those waiting for a parallel slot of an already-loaded model (Ollama #7758); idle runners are
evicted least-recently-used first; memory is checked before loading.

Shutdown (SIGTERM) is immediate: every request still waiting for a slot or a load fails at once
with 503 "server is shutting down", every runner is closed at once (killed if it has not exited
within `SHUTDOWN_GRACE`), and a request whose runner goes away under it fails with that same
error, so open streams end with it as their last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psutil

from corral.config import Settings
from corral.engine.base import Engine, LoadSpec, Runner
from corral.errors import CorralError, RequestCanceledError, ServerBusyError
from corral.fit import Accelerated, Placement

log = logging.getLogger(__name__)
GiB = 1024**3
T = TypeVar("T")
SHUTDOWN_GRACE = 1.0  # seconds a runner gets to exit by itself at shutdown before it is killed


def shutting_down() -> CorralError:
    return ServerBusyError("server is shutting down")


def available_memory() -> int:
    return int(psutil.virtual_memory().available)


def format_gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


@dataclass(frozen=True)
class ModelRef:
    """What the scheduler needs to know about a model to load it and report it in /api/ps."""

    name: str
    digest: str
    spec: LoadSpec
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # num_ctx was nobody's choice (not the request's, the Modelfile's or the operator's): a loaded
    # runner of the same spec with a larger context serves it without a reload
    ctx_flexible: bool = field(default=False, compare=False, hash=False)

    def served_by(self, loaded: LoadSpec) -> bool:
        if loaded == self.spec:
            return True
        if not self.ctx_flexible or loaded.options.num_ctx < self.spec.options.num_ctx:
            return False
        return replace(loaded, options=replace(loaded.options, num_ctx=self.spec.options.num_ctx)) == self.spec


@dataclass(frozen=True)
class Room:
    """`_make_room`'s answer: there is room, with this placement on the accelerators (if any)."""

    placement: Placement | None = None


def device_bytes(runner: Runner) -> dict[str, int]:
    """The bytes a runner holds on each accelerator (engines without accelerators: none)."""
    got = getattr(runner, "device_bytes", None)
    return dict(got) if isinstance(got, dict) else {}


@dataclass(eq=False)
class LoadedRunner:
    ref: ModelRef
    runner: Runner
    semaphore: asyncio.Semaphore
    estimate: int
    keep_alive: float
    refcount: int = 0
    last_used: float = 0.0
    expires_at: float = math.inf
    closing: bool = False
    load_duration: float = 0.0

    @property
    def idle(self) -> bool:
        return self.refcount == 0 and not self.closing


class Scheduler:
    """Loads and evicts runners; hands out leases bounded by `num_parallel` per runner."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        memory_probe: Callable[[], int] = available_memory,
        clock: Callable[[], float] = time.monotonic,
        reap_interval: float = 0.5,
        on_runner_died: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.memory_probe = memory_probe
        self.clock = clock
        self.reap_interval = reap_interval
        self.on_runner_died = on_runner_died
        self.loaded: dict[LoadSpec, LoadedRunner] = {}  # by the spec each runner was loaded with
        self.pending = 0
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._shutdown: asyncio.Future[None] | None = None

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_loop(), name="corral-reaper")

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def shutdown(self) -> None:
        """Stop reaping and close every runner. Idempotent: a second call (the app's lifespan after
        the SIGTERM handler started one) waits for the first instead of returning early."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shutdown_all())
        await asyncio.shield(self._shutdown)

    async def _shutdown_all(self) -> None:
        self._stopping = True
        self._stopped.set()  # waiters for slots and loads fail with 503 now
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        entries = list(self.loaded.values())
        await asyncio.gather(*(self._unload(entry, timeout=SHUTDOWN_GRACE) for entry in entries))
        await self._notify()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:  # the reaper must survive anything
                log.exception("reaper failed")

    async def reap(self) -> None:
        """Unload idle runners whose keep-alive has expired, and forget dead ones."""
        now = self.clock()
        for entry in list(self.loaded.values()):
            if not entry.runner.alive and entry.refcount == 0:
                log.warning("runner for %s has stopped; forgetting it", entry.ref.name)
                await self._unload(entry)
            elif entry.idle and entry.expires_at <= now:
                log.info("keep_alive expired for %s", entry.ref.name)
                await self._unload(entry)

    # leases ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(self, ref: ModelRef, keep_alive: float | None = None) -> AsyncIterator[Runner]:
        """Wait (bounded by max_queue) for a runner of `ref` with a free parallel slot."""
        if self._stopping:
            raise shutting_down()
        if self.pending >= self.settings.max_queue:
            raise ServerBusyError()
        self.pending += 1
        acquired: LoadedRunner | None = None
        try:
            acquired = await self._acquire(ref, keep_alive)
        except asyncio.CancelledError:
            raise RequestCanceledError() from None
        finally:
            self.pending -= 1
            if acquired is None:
                await self._notify()
        try:
            yield acquired.runner
        except CorralError as exc:
            if self._stopping and exc.status >= 500:  # its runner was closed under it
                raise shutting_down() from None
            raise
        finally:
            await self._release(acquired)

    async def _acquire(self, ref: ModelRef, keep_alive: float | None) -> LoadedRunner:
        while True:
            entry = await self._runner_for(ref)
            entry.refcount += 1

            async def give_back(_: object, sem: asyncio.Semaphore = entry.semaphore) -> None:
                sem.release()

            try:
                if entry.semaphore.locked():
                    await self._unless_stopping(entry.semaphore.acquire(), give_back)
                else:
                    await entry.semaphore.acquire()  # free: taken at once, without suspending
            except BaseException:
                entry.refcount -= 1
                raise
            if entry.runner.alive and not entry.closing:
                entry.keep_alive = self._keep_alive(keep_alive)
                entry.expires_at = math.inf
                entry.last_used = self.clock()
                return entry
            entry.semaphore.release()
            entry.refcount -= 1
            await self._unload(entry)

    async def _unless_stopping(self, aw: Awaitable[T], undo: Callable[[T], Awaitable[object]]) -> T:
        """Await `aw` (a slot, a load) unless the scheduler starts stopping first: then cancel it and
        fail with 503. A result that arrives but is not handed out (stopping, or this request was
        cancelled meanwhile) is given back with `undo`."""
        if self._stopping:
            raise shutting_down()
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self._abandon(task, undo)
            raise
        finally:
            stop.cancel()
        if self._stopping:
            await self._abandon(task, undo)
            raise shutting_down()
        return task.result()

    @staticmethod
    async def _abandon(task: asyncio.Future[T], undo: Callable[[T], Awaitable[object]]) -> None:
        task.cancel()  # if still waiting: cancelling cleans up after itself (a load closes its runner)
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await undo(task.result())

    def _keep_alive(self, requested: float | None) -> float:
        return self.settings.keep_alive_seconds if requested is None else requested

    async def _release(self, entry: LoadedRunner) -> None:
        entry.semaphore.release()
        entry.refcount -= 1
        entry.last_used = self.clock()
        if entry.refcount == 0:
            if not entry.runner.alive:
                await self._unload(entry)
            elif entry.keep_alive <= 0:
                await self._unload(entry)
            else:
                entry.expires_at = entry.last_used + entry.keep_alive
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # loading ---------------------------------------------------------------------------------
    async def _runner_for(self, ref: ModelRef) -> LoadedRunner:
        """The loaded runner for `ref`, loading (and evicting) as needed."""
        while True:
            if self._stopping:
                raise shutting_down()
            entry = self.holding(ref)
            if entry is not None and entry.runner.alive and ref.served_by(entry.ref.spec):
                return entry
            if entry is not None and entry.refcount == 0:
                await self._unload(entry)  # dead, or load options changed
                continue
            if entry is None:
                async with self._load_lock:
                    if self.holding(ref) is not None:
                        continue
                    room = await self._make_room(ref)
                    if room is not None:
                        return await self._load(ref, room.placement)
            await self._wait_for_change()

    async def _wait_for_change(self) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.reap_interval)

    async def _make_room(self, ref: ModelRef) -> Room | None:
        """Evict idle runners (LRU first) until `ref` fits; None means wait for one to idle.
        On accelerators, first the device memory (`_place`), then what stays in host memory."""
        placement = await self._place(ref)
        need = self.engine.estimate(ref.spec) - (placement.vram if placement is not None else 0)
        while True:
            idle = sorted((e for e in self.loaded.values() if e.idle), key=lambda e: e.last_used)
            available = self.memory_probe()
            ceiling = available + sum(e.estimate for e in self.loaded.values())
            if need > ceiling:
                raise CorralError(
                    f"model requires more system memory ({format_gib(need)}) than is available "
                    f"({format_gib(ceiling)})"
                )
            too_many = len(self.loaded) >= self.settings.max_runners
            if not too_many and need <= available:
                return Room(placement)
            if not idle:
                return None
            log.info("evicting %s to make room for %s", idle[0].ref.name, ref.name)
            await self._unload(idle[0])

    def _device_use(self) -> dict[str, int]:
        """Bytes our loaded runners hold on each accelerator (by device name)."""
        used: dict[str, int] = {}
        for entry in self.loaded.values():
            for name, size in device_bytes(entry.runner).items():
                used[name] = used.get(name, 0) + size
        return used

    async def _place(self, ref: ModelRef) -> Placement | None:
        """Where `ref`'s layers go on the engine's accelerators (None: it has none). Idle runners
        holding device memory are evicted (LRU first) while that gets `ref` more layers on the
        devices; when busy runners hold the rest, `ref` loads partially offloaded."""
        engine = self.engine
        if not isinstance(engine, Accelerated) or not engine.devices():
            return None
        alone = engine.place(ref.spec)
        while True:
            placement = engine.place(ref.spec, self._device_use())
            if placement.n_gpu_layers >= alone.n_gpu_layers and (placement.fits or not alone.fits):
                return placement
            idle = sorted((e for e in self.loaded.values() if e.idle and device_bytes(e.runner)),
                          key=lambda e: e.last_used)
            if not idle:
                log.info("%s gets %s beside the loaded models (alone: %s)", ref.name,
                         placement.describe(), alone.describe())
                return placement
            log.info("evicting %s to free GPU memory for %s", idle[0].ref.name, ref.name)
            await self._unload(idle[0])

    async def _load(self, ref: ModelRef, placement: Placement | None = None) -> LoadedRunner:
        started = time.monotonic()
        if placement is not None and isinstance(self.engine, Accelerated):
            loading = self.engine.load(ref.spec, placement)
        else:
            loading = self.engine.load(ref.spec)
        runner = await self._unless_stopping(loading, lambda r: r.close())
        entry = LoadedRunner(
            ref=ref,
            runner=runner,
            semaphore=asyncio.Semaphore(ref.spec.num_parallel),
            estimate=self.engine.estimate(ref.spec),
            keep_alive=self.settings.keep_alive_seconds,
            last_used=self.clock(),
            load_duration=time.monotonic() - started,
        )
        self.loaded[ref.spec] = entry
        where = f" ({placement.describe()})" if placement is not None else ""
        log.info("loaded %s in %.2fs%s", ref.name, entry.load_duration, where)
        return entry

    async def _unload(self, entry: LoadedRunner, *, timeout: float | None = None) -> None:
        if entry.closing:
            return
        entry.closing = True
        if not entry.runner.alive and self.on_runner_died is not None:
            self.on_runner_died(entry.ref.name)
        if self.loaded.get(entry.ref.spec) is entry:
            del self.loaded[entry.ref.spec]
        try:
            await (entry.runner.close() if timeout is None else entry.runner.close(timeout=timeout))
        except Exception:
            log.exception("closing runner for %s failed", entry.ref.name)
        await self._notify()

    # queries and explicit control ------------------------------------------------------------
    def holding(self, ref: ModelRef) -> LoadedRunner | None:
        """The runner loaded for `ref`'s model: the one of its spec, else the one holding the same
        model under other load options (one runner per model, as in Ollama: `ref` replaces it once
        it is idle, or is served by it when `ref.served_by` its spec)."""
        entry = self.loaded.get(ref.spec)
        if entry is not None:
            return entry
        return next((e for e in self.loaded.values() if e.ref.spec.model_path == ref.spec.model_path), None)

    async def unload(self, ref: ModelRef) -> bool:
        """Unload `ref`'s model now if idle, else as soon as its requests finish (keep_alive 0)."""
        entry = self.holding(ref)
        if entry is None:
            return False
        entry.keep_alive = 0
        if entry.refcount == 0:
            await self._unload(entry)
        return True

    def snapshot(self) -> list[LoadedRunner]:
        return sorted(self.loaded.values(), key=lambda e: e.expires_at, reverse=True)
