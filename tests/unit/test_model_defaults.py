"""Per-model operator defaults (`[models."name"]`) reach the runner and the scheduler, layered
over the Modelfile and the global settings and under the request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.scheduler import Scheduler
from corral.server.app import create_app
from corral.store.store import Store
from tests.appenv import make_model


def build(tmp_path: Path) -> tuple[Any, ScriptedEngine, Scheduler]:
    settings = Settings(home=tmp_path, num_parallel=4, keep_alive="5m", context_length=1000, model_defaults={
        "tiny": {"num_ctx": 1536, "num_parallel": 2, "keep_alive": "7m", "num_gpu": 0, "main_gpu": 1},
    })
    store = Store(tmp_path / "models")
    make_model(store, tmp_path, "tiny", parameters={"num_ctx": 512, "temperature": 0.1})
    make_model(store, tmp_path, "plain", parameters={"num_ctx": 512})
    make_model(store, tmp_path, "bare")
    engine = ScriptedEngine()
    scheduler = Scheduler(engine, settings)
    return create_app(settings, store, scheduler=scheduler, prune_on_start=False), engine, scheduler


async def generate(app: Any, body: dict[str, Any]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
        r = await c.post("/api/generate", json={"prompt": "hi", "stream": False, **body})
        assert r.status_code == 200, r.text


def test_operator_defaults_over_modelfile_under_request(tmp_path: Path) -> None:
    app, engine, scheduler = build(tmp_path)

    async def main() -> None:
        await generate(app, {"model": "tiny"})
        spec = engine.runners[-1].spec
        assert spec.options.num_ctx == 1536  # over the Modelfile's 512 and the global 1000
        assert spec.num_parallel == 2 and spec.options.num_gpu == 0 and spec.options.main_gpu == 1
        assert scheduler.snapshot()[0].keep_alive == 420
        await generate(app, {"model": "tiny", "options": {"num_ctx": 1024, "main_gpu": 0}, "keep_alive": "1m"})
        spec = engine.runners[-1].spec
        assert spec.options.num_ctx == 1024 and spec.options.main_gpu == 0 and spec.num_parallel == 2
        assert [e.keep_alive for e in scheduler.snapshot() if e.ref.name == "tiny:latest"] == [60]
        await generate(app, {"model": "plain"})
        spec = engine.runners[-1].spec
        assert spec.options.num_ctx == 512 and spec.num_parallel == 4 and spec.options.main_gpu is None
        await generate(app, {"model": "bare"})
        assert engine.runners[-1].spec.options.num_ctx == 1000
        assert {e.ref.name: e.keep_alive for e in scheduler.snapshot()}["bare:latest"] == 300
        await scheduler.shutdown()

    asyncio.run(main())
