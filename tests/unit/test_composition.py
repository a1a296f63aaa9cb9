"""The composition root (`corral serve`'s build_app): the engine is a setting read there, and the
server's services are built there and handed to the app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from corral.cli.serve import ENGINES, build_app
from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.store.store import Store
from tests.appenv import BASE, TINY_TEMPLATE, make_model


def test_the_engine_is_chosen_by_the_setting(tmp_path: Path) -> None:
    cfg = Settings(home=tmp_path, engine="fake", noprune=True)
    app = build_app(cfg)
    ctx = app.state.ctx
    assert isinstance(ctx.scheduler.engine, ScriptedEngine)
    assert ctx.services.keys.path == tmp_path / "keys.json" and ctx.services.hf_endpoint is None
    make_model(Store(cfg.models_dir), tmp_path, "tiny", template=TINY_TEMPLATE)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            return await c.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})

    r = asyncio.run(main())
    assert r.status_code == 200 and r.json()["response"] == "Hello world!"


def test_an_unknown_engine_stops_serve_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        build_app(Settings(home=tmp_path, engine="tpu"))
    assert str(exc.value) == f"Error: unknown engine 'tpu' (CORRAL_ENGINE: {', '.join(ENGINES)})"
    assert "llamacpp" in ENGINES
