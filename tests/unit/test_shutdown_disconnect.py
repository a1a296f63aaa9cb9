"""SIGTERM in the scheduler (waiters fail with 503 at once, runners close, in-flight leases end with
the shutdown error) and the disconnect watch shared by every non-streaming route."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from corral.config import Settings
from corral.engine.base import GenerateParams, LoadSpec
from corral.engine.fake import ScriptedEngine
from corral.errors import CorralError, RequestCanceledError
from corral.scheduler import ModelRef, Scheduler
from corral.schemas.options import LoadOptions
from corral.server.stream import until_disconnected

SHUTTING_DOWN = "server is shutting down"


def ref(path: str = "/m/a", parallel: int = 1) -> ModelRef:
    spec = LoadSpec(model_path=Path(path), options=LoadOptions(num_ctx=512), num_parallel=parallel)
    return ModelRef(name=path, digest="d" * 64, spec=spec)


async def use(sched: Scheduler, r: ModelRef) -> str:
    async with sched.lease(r) as runner:
        return "".join([c.text async for c in runner.generate(GenerateParams(prompt="hi"))])


async def until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0)


def assert_shutting_down(result: object) -> None:
    assert isinstance(result, CorralError), result
    assert (result.status, result.message) == (503, SHUTTING_DOWN)


def test_shutdown_fails_running_and_queued_requests_at_once_and_closes_runners() -> None:
    async def main() -> None:
        engine = ScriptedEngine(words=["w"] * 10_000, delay=0.01)  # 100 s of "decoding"
        sched = Scheduler(engine, Settings(), memory_probe=lambda: 10**12)
        running = asyncio.create_task(use(sched, ref()))
        await until(lambda: engine.runners and engine.runners[0].active)
        queued = asyncio.create_task(use(sched, ref()))
        await until(lambda: sched.pending == 1)
        await asyncio.wait_for(sched.shutdown(), 5)
        results = await asyncio.wait_for(asyncio.gather(running, queued, return_exceptions=True), 5)
        for result in results:
            assert_shutting_down(result)
        assert len(engine.runners) == 1 and engine.runners[0].closed  # nothing reloaded for the queued one
        assert not sched.loaded and sched.pending == 0
        with pytest.raises(CorralError, match=SHUTTING_DOWN):
            await use(sched, ref())
    asyncio.run(main())


def test_shutdown_abandons_a_load_in_progress() -> None:
    async def main() -> None:
        engine = ScriptedEngine(load_delay=60)
        sched = Scheduler(engine, Settings(), memory_probe=lambda: 10**12)
        loading = asyncio.create_task(use(sched, ref()))
        await until(lambda: sched.pending == 1)
        await asyncio.sleep(0.01)
        await asyncio.wait_for(sched.shutdown(), 5)
        assert_shutting_down((await asyncio.wait_for(asyncio.gather(loading, return_exceptions=True), 5))[0])
        assert not engine.runners and not sched.loaded
    asyncio.run(main())


def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    async def main() -> None:
        engine = ScriptedEngine(words=["w"] * 20, delay=0.01)
        sched = Scheduler(engine, Settings(), memory_probe=lambda: 10**12)
        running = asyncio.create_task(use(sched, ref()))
        await until(lambda: engine.runners and engine.runners[0].active)
        waiters = [asyncio.create_task(use(sched, ref())) for _ in range(3)]
        await until(lambda: sched.pending == 3)
        waiters[0].cancel()
        await asyncio.gather(waiters[0], return_exceptions=True)
        assert await asyncio.wait_for(running, 5) == "w" * 20
        assert await asyncio.wait_for(asyncio.gather(*waiters[1:]), 5) == ["w" * 20] * 2
        assert sched.pending == 0 and next(iter(sched.loaded.values())).refcount == 0
    asyncio.run(main())


def fake_request(receive: Any) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/api/generate", "headers": []}, receive)


def test_until_disconnected_cancels_the_work_when_the_client_goes() -> None:
    async def main() -> None:
        gone = asyncio.Event()
        cleaned_up = asyncio.Event()
        started = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def work() -> str:
            started.set()
            try:
                await asyncio.sleep(60)
            finally:
                cleaned_up.set()
            return "never"

        reply = asyncio.create_task(until_disconnected(fake_request(receive), work()))
        await started.wait()
        gone.set()
        with pytest.raises(RequestCanceledError):
            await asyncio.wait_for(reply, 5)
        assert cleaned_up.is_set()
    asyncio.run(main())


def test_until_disconnected_passes_results_and_errors_through() -> None:
    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        async def ok() -> str:
            return "body"

        async def bad() -> str:
            raise CorralError("boom", status=418)

        assert await until_disconnected(fake_request(receive), ok()) == "body"
        with pytest.raises(CorralError, match="boom"):
            await until_disconnected(fake_request(receive), bad())
    asyncio.run(main())
