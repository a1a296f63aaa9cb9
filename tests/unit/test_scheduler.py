"""Scheduler rules (spec §9 and corral's fixes) against the scripted engine, with a fake clock."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from corral.config import Settings
from corral.engine.base import GenerateParams, LoadSpec
from corral.engine.fake import ScriptedEngine
from corral.errors import CorralError, ServerBusyError
from corral.scheduler import ModelRef, Scheduler
from corral.schemas.options import LoadOptions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ref(path: str, num_ctx: int = 4096, parallel: int = 2) -> ModelRef:
    spec = LoadSpec(model_path=Path(path), options=LoadOptions(num_ctx=num_ctx), num_parallel=parallel)
    return ModelRef(name=path, digest="d" * 64, spec=spec)


def make(engine: ScriptedEngine | None = None, memory: int = 10**12, **cfg: object
         ) -> tuple[Scheduler, ScriptedEngine, Clock]:
    engine = engine or ScriptedEngine()
    clock = Clock()
    sched = Scheduler(engine, Settings(**cfg), memory_probe=lambda: memory, clock=clock)  # type: ignore[arg-type]
    return sched, engine, clock


def loaded(sched: Scheduler) -> list[str]:
    """The model files of the loaded runners (the table is keyed by their load specs)."""
    assert all(spec == entry.ref.spec for spec, entry in sched.loaded.items())
    return sorted(str(spec.model_path) for spec in sched.loaded)


async def use(sched: Scheduler, r: ModelRef, keep_alive: float | None = None, hold: float = 0.0) -> str:
    async with sched.lease(r, keep_alive) as runner:
        await asyncio.sleep(hold)
        out = [c.text async for c in runner.generate(GenerateParams(prompt="hi"))]
        return "".join(out)


def test_loads_once_and_reuses() -> None:
    async def main() -> None:
        sched, engine, _ = make()
        assert await use(sched, ref("/m/a")) == "Hello world!"
        assert await use(sched, ref("/m/a")) == "Hello world!"
        assert len(engine.runners) == 1
    asyncio.run(main())


def test_queue_bound_counts_requests_waiting_on_a_loaded_model() -> None:
    async def main() -> None:
        sched, _, _ = make(max_queue=2)
        r = ref("/m/a", parallel=1)
        await use(sched, r)  # loaded; now every further request waits on its single slot
        tasks = [asyncio.create_task(use(sched, r, hold=0.2)) for _ in range(6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        busy = [x for x in results if isinstance(x, ServerBusyError)]
        done = [x for x in results if x == "Hello world!"]
        assert len(done) == 3 and len(busy) == 3  # 1 running + 2 queued; the rest 503 at once
        assert "maximum pending requests exceeded" in busy[0].message
        assert sched.pending == 0
        assert await use(sched, r) == "Hello world!"  # serves normally afterwards
    asyncio.run(main())


def test_keep_alive_expiry_with_injected_clock() -> None:
    async def main() -> None:
        sched, engine, clock = make(keep_alive="5m")
        await use(sched, ref("/m/a"))
        clock.now += 299
        await sched.reap()
        assert sched.loaded and not engine.runners[0].closed
        clock.now += 2
        await sched.reap()
        assert not sched.loaded and engine.runners[0].closed
    asyncio.run(main())


def test_keep_alive_zero_unloads_at_once_and_negative_never() -> None:
    async def main() -> None:
        sched, engine, clock = make()
        await use(sched, ref("/m/a"), keep_alive=0)
        assert not sched.loaded and engine.runners[0].closed
        await use(sched, ref("/m/b"), keep_alive=math.inf)
        clock.now += 10**9
        await sched.reap()
        assert loaded(sched) == ["/m/b"]
    asyncio.run(main())


def test_reload_only_when_load_options_change() -> None:
    async def main() -> None:
        sched, engine, _ = make()
        await use(sched, ref("/m/a", num_ctx=2048))
        await use(sched, ref("/m/a", num_ctx=2048))
        assert len(engine.runners) == 1
        await use(sched, ref("/m/a", num_ctx=1024))
        assert len(engine.runners) == 2 and engine.runners[0].closed
    asyncio.run(main())


def test_unload_by_ref_finds_its_model_whatever_the_runner_was_loaded_with() -> None:
    async def main() -> None:
        sched, engine, _ = make()
        big = ref("/m/a", num_ctx=8192)
        flexible = ModelRef(name="/m/a", digest="d" * 64, spec=ref("/m/a", num_ctx=2048).spec, ctx_flexible=True)
        await use(sched, big)
        assert await use(sched, flexible) == "Hello world!" and len(engine.runners) == 1  # served by `big`
        assert list(sched.loaded) == [big.spec]
        assert not await sched.unload(ref("/m/b"))
        assert await sched.unload(ref("/m/a", num_ctx=1024))  # other options: the same model
        assert not sched.loaded and engine.runners[0].closed
    asyncio.run(main())


def test_evicts_least_recently_used_idle_runner_at_max_loaded() -> None:
    async def main() -> None:
        sched, _, clock = make(max_loaded_models=2)
        await use(sched, ref("/m/a"))
        clock.now += 1
        await use(sched, ref("/m/b"))
        clock.now += 1
        await use(sched, ref("/m/a"))  # a is now the most recently used
        clock.now += 1
        await use(sched, ref("/m/c"))
        assert loaded(sched) == ["/m/a", "/m/c"]
    asyncio.run(main())


def test_too_big_for_memory_fails_clearly_without_evicting() -> None:
    async def main() -> None:
        engine = ScriptedEngine(estimates={"/m/huge": 10**12})
        sched, _, _ = make(engine, memory=10**9)
        await use(sched, ref("/m/a"))
        with pytest.raises(CorralError, match="model requires more system memory"):
            await use(sched, ref("/m/huge"))
        assert loaded(sched) == ["/m/a"]
        assert sched.pending == 0
    asyncio.run(main())


def test_evicts_idle_runner_to_fit_memory() -> None:
    async def main() -> None:
        engine = ScriptedEngine(estimates={"/m/a": 600, "/m/b": 600})
        available = {"bytes": 1000}
        sched = Scheduler(engine, Settings(), memory_probe=lambda: available["bytes"], clock=Clock())
        await use(sched, ref("/m/a"))
        available["bytes"] = 400  # a occupies memory now
        original_unload = sched._unload

        async def unload_and_free(entry):  # type: ignore[no-untyped-def]
            await original_unload(entry)
            available["bytes"] += entry.estimate

        sched._unload = unload_and_free  # type: ignore[method-assign]
        await use(sched, ref("/m/b"))
        assert loaded(sched) == ["/m/b"]
    asyncio.run(main())


def test_dead_runner_is_forgotten_and_reloaded() -> None:
    async def main() -> None:
        sched, engine, _ = make()
        await use(sched, ref("/m/a"))
        engine.runners[0].dead = True
        assert await use(sched, ref("/m/a")) == "Hello world!"
        assert len(engine.runners) == 2
    asyncio.run(main())


def test_waits_for_a_busy_runner_instead_of_failing_when_at_max_loaded() -> None:
    async def main() -> None:
        engine = ScriptedEngine(delay=0.05)
        sched, _, _ = make(engine, max_loaded_models=1)
        first = asyncio.create_task(use(sched, ref("/m/a")))
        await asyncio.sleep(0.01)
        second = await use(sched, ref("/m/b"))
        assert await first == "Hello world!" and second == "Hello world!"
        assert loaded(sched) == ["/m/b"]
    asyncio.run(main())
