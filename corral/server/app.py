"""`create_app`: builds the FastAPI application from injected collaborators.

The app owns routing and middleware wiring only. Settings arrive already parsed; the store, the
scheduler and the services (authentication, rate limits, metrics, registry identity) are built by
the caller (the `serve` CLI verb or a test), so nothing here reads the environment or holds
module-level state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from corral import __version__
from corral.config import Settings
from corral.scheduler import Scheduler
from corral.server.context import AppContext, Services
from corral.server.errors import install_error_handlers
from corral.server.native.management import router as management_router
from corral.server.ops.allowlist import install_allowlist
from corral.server.ops.bodycheck import JSONBodyCheck
from corral.server.ops.ready import router as ready_router
from corral.server.ops.registry_api import install_registry
from corral.server.ops.security import install_security
from corral.server.ui import router as ui_router
from corral.store.store import Store

log = logging.getLogger(__name__)
_JSON_PREFIXES = ("/api/", "/v1/")


class JSONBodies:
    """Treat every /api and /v1 request body as JSON, whatever its Content-Type (as Ollama does:
    `curl -d '{...}'` sends form encoding). Blob uploads keep their raw bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(_JSON_PREFIXES) and not path.startswith("/api/blobs"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    store: Store,
    *,
    scheduler: Scheduler | None = None,
    services: Services | None = None,
    prune_on_start: bool | None = None,
) -> FastAPI:
    """Build the app. `scheduler` is a `corral.scheduler.Scheduler` (None: management only);
    `services` default to `Services.from_settings(settings)`."""
    ctx = AppContext(settings=settings, store=store, services=services or Services.from_settings(settings),
                     scheduler=scheduler)
    do_prune = (not settings.noprune) if prune_on_start is None else prune_on_start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if do_prune:
            started = time.monotonic()
            removed = store.prune()
            log.info("pruned %d unused blobs in %.2fs", removed, time.monotonic() - started)
        if ctx.scheduler is not None:
            await ctx.scheduler.start()
        try:
            yield
        finally:
            if ctx.scheduler is not None:
                await ctx.scheduler.shutdown()

    app = FastAPI(title="corral", version=__version__, lifespan=lifespan)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(JSONBodyCheck)  # innermost: sees the body the security middleware buffered
    install_security(app, ctx)
    app.add_middleware(JSONBodies)
    install_allowlist(app, settings)  # outermost: refused addresses never reach authentication
    app.include_router(management_router)
    app.include_router(ready_router)
    app.include_router(ui_router)
    install_registry(app, ctx)
    if ctx.scheduler is not None:
        ctx.scheduler.on_runner_died = ctx.services.metrics.count_runner_restart
        from corral.server.native.embeddings import router as embeddings_router
        from corral.server.native.inference import router as inference_router

        app.include_router(inference_router)
        app.include_router(embeddings_router)
        from corral.server.native.ps import router as ps_router

        app.include_router(ps_router)
        from corral.server.native.rerank import router as rerank_router
        from corral.server.native.tokenize import router as tokenize_router

        app.include_router(rerank_router)
        app.include_router(tokenize_router)
        from corral.server.native.ws import router as ws_router

        app.include_router(ws_router)
        from corral.server.compat.anthropic import router as anthropic_router
        from corral.server.compat.openai import router as openai_router
        from corral.server.compat.responses import router as responses_router

        app.include_router(openai_router)
        app.include_router(responses_router)
        app.include_router(anthropic_router)
    return app
