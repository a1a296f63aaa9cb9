"""`GET /api/ready` in-process over the scripted engine: counts for anyone, model names only with
`read`, per-model slots and queue, 503 when the queue is full or the server is stopping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from corral.auth.keys import KEYS_FILE, KeyStore
from corral.server.runtime import resolve_job
from tests.appenv import Env, run


async def ready(env: Env, query: str = "", key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with env.client() as c:
        return await c.get("/api/ready" + query, headers=headers)


def test_ready_reports_slots_and_queue_per_model(tmp_path: Path) -> None:
    env = Env(tmp_path, num_parallel=1, max_queue=2)

    async def main() -> None:
        r = await ready(env)
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "queue_depth": 0, "max_queue": 2, "loaded": 0, "active": 0,
                            "models": []}
        job = await resolve_job(env.app.state.ctx, "tiny", None, None)
        async with env.scheduler.lease(job.ref):
            waiter = asyncio.create_task(_hold(env, job.ref))
            while env.scheduler.pending == 0:  # the second lease is queued behind the only slot
                await asyncio.sleep(0)
            r = await ready(env)
            assert r.status_code == 200
            body = r.json()
            assert body["queue_depth"] == 1 and body["active"] == 1 and body["loaded"] == 1
            assert body["models"] == [{"name": "tiny:latest", "loaded": True, "queue_depth": 1, "active": 1}]
            one = (await ready(env, "?model=tiny")).json()["models"]
            assert one == body["models"]
            other = (await ready(env, "?model=other:7b")).json()["models"]
            assert other == [{"name": "other:7b", "loaded": False, "queue_depth": 0, "active": 0}]
        await waiter

    run(main())


async def _hold(env: Env, ref: Any) -> None:
    async with env.scheduler.lease(ref):
        pass


def test_ready_is_503_when_the_queue_is_full(tmp_path: Path) -> None:
    env = Env(tmp_path, num_parallel=1, max_queue=1)

    async def main() -> None:
        job = await resolve_job(env.app.state.ctx, "tiny", None, None)
        async with env.scheduler.lease(job.ref):
            waiter = asyncio.create_task(_hold(env, job.ref))
            while env.scheduler.pending == 0:
                await asyncio.sleep(0)
            r = await ready(env)
            assert r.status_code == 503 and r.json()["status"] == "busy"
        await waiter
        assert (await ready(env)).status_code == 200

    run(main())


def test_ready_is_503_while_shutting_down(tmp_path: Path) -> None:
    env = Env(tmp_path)

    async def main() -> None:
        await env.scheduler.shutdown()
        r = await ready(env)
        assert r.status_code == 503 and r.json()["status"] == "shutting down"

    run(main())


def test_ready_is_public_but_names_models_only_for_read(tmp_path: Path) -> None:
    env = Env(tmp_path)
    keys = KeyStore(tmp_path / KEYS_FILE)
    _, reader = keys.create("read", name="lb")
    _, inferer = keys.create("infer", name="app")

    async def main() -> None:
        async with env.client() as c:
            assert (await c.get("/api/tags")).status_code == 401  # auth is on
        job = await resolve_job(env.app.state.ctx, "tiny", None, None)
        async with env.scheduler.lease(job.ref):
            anon = await ready(env)
            assert anon.status_code == 200
            assert anon.json() == {"status": "ok", "queue_depth": 0, "max_queue": 512, "loaded": 1, "active": 1}
            assert "models" not in (await ready(env, key="crl_bad_key")).json()
            assert "models" not in (await ready(env, key=inferer)).json()
            named = (await ready(env, key=reader)).json()
            assert [m["name"] for m in named["models"]] == ["tiny:latest"]
            assert (await ready(env, "?model=tiny")).status_code == 401
            assert (await ready(env, "?model=tiny", key=inferer)).status_code == 403
            assert (await ready(env, "?model=tiny", key=reader)).json()["models"][0]["loaded"] is True
            async with env.client() as c:
                assert (await c.head("/api/ready")).status_code == 200

    run(main())
