"""`corral serve`: assemble settings, store, engine and scheduler, then run uvicorn.

This is the edge: the only place besides `Settings.from_env` that knows how the pieces fit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from collections.abc import Callable
from types import FrameType

import psutil
import uvicorn
from fastapi import FastAPI

from corral.auth.authenticator import auth_configured
from corral.config import Settings
from corral.engine.base import Engine
from corral.engine.fake import ScriptedEngine
from corral.engine.llamacpp.backend import Backend, log_devices
from corral.engine.llamacpp.backend import select as select_backend
from corral.engine.llamacpp.proc import LlamaCppEngine
from corral.engine.llamacpp.rpcpool import WorkerPool
from corral.engine.llamacpp.tuning import RunnerTuning
from corral.errors import CorralError
from corral.registry.auth import KEY_NAME, KeyPair, ensure_keypair
from corral.scheduler import SHUTDOWN_GRACE, Scheduler
from corral.server.app import create_app
from corral.server.context import Services
from corral.server.ops.listener import deadline_protocol
from corral.server.ops.requestlog import JsonFormatter, RequestIdFilter
from corral.store.store import Store

log = logging.getLogger("corral")


def configure_logging(cfg: Settings) -> None:
    level = logging.DEBUG if cfg.debug else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="time=%(asctime)s level=%(levelname)s source=%(name)s msg=%(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        if cfg.log_format.strip().lower() == "json":
            handler.setFormatter(JsonFormatter())


def check_binding(cfg: Settings) -> None:
    """Refuse a public bind without auth unless explicitly allowed (then warn loudly)."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        sys.exit("Error: --tls-cert and --tls-key (CORRAL_TLS_CERT/CORRAL_TLS_KEY) must be given together")
    if cfg.host_url.is_loopback or auth_configured(cfg):
        return
    if not cfg.allow_unauthenticated:
        sys.exit(
            f"Error: refusing to listen on {cfg.host_url.bind_host}:{cfg.host_url.port} without authentication.\n"
            "Anyone who can reach this address could run and delete your models. Either:\n"
            "  - create an API key:   corral keys create --scope infer,read --name <who>\n"
            "    (then clients send it: CORRAL_API_KEY=<key>, or Authorization: Bearer <key>)\n"
            "  - configure JWT:       CORRAL_JWT_SECRET=... or CORRAL_JWT_PUBLIC_KEY=<pem file>\n"
            "  - bind to loopback:    corral serve --host 127.0.0.1:11434\n"
            "  - or, if a proxy in front of corral does authentication: --allow-unauthenticated\n"
            "    (CORRAL_ALLOW_UNAUTHENTICATED=1)"
        )
    log.warning("!" * 78)
    log.warning("SERVING WITHOUT AUTHENTICATION on %s: anyone who can reach it has full access "
                "(--allow-unauthenticated)", cfg.host)
    log.warning("!" * 78)


def choose_backend(cfg: Settings) -> Backend:
    """The llama.cpp build the runners use, its devices logged as Ollama logs them at start."""
    try:
        backend = select_backend(cfg.backend, cfg.backends_dir)
    except CorralError as exc:
        sys.exit(f"Error: {exc}")
    mem = psutil.virtual_memory()
    log_devices(backend, int(mem.total), int(mem.available), overhead=cfg.gpu_overhead, limit=cfg.gpu_memory_limit)
    return backend


def rpc_workers(cfg: Settings) -> WorkerPool | None:
    """CORRAL_RPC_WORKERS: the RPC-enabled llama.cpp build runners use, and what each worker reports."""
    if not cfg.rpc_workers:
        return None
    try:
        return WorkerPool.start(cfg.rpc_workers, cfg.rpc_shares)
    except CorralError as exc:
        sys.exit(f"Error: CORRAL_RPC_WORKERS is set, but {exc.message}")


def llamacpp_engine(cfg: Settings) -> Engine:
    return LlamaCppEngine(
        log_dir=cfg.home / "logs",
        load_timeout=cfg.load_timeout_seconds,
        backend=choose_backend(cfg),
        gpu_overhead=cfg.gpu_overhead,
        gpu_memory_limit=cfg.gpu_memory_limit,
        cache_ram=cfg.cache_ram_bytes,
        cache_disk=cfg.cache_disk,
        cache_disk_max=cfg.cache_disk_max_bytes,
        rpc=rpc_workers(cfg),
        tuning=RunnerTuning(cfg.flash_attention, cfg.kv_cache_type, cfg.kv_unified, cfg.speculative),
    )


# The engines `CORRAL_ENGINE` chooses from: a new engine is its module plus one line here.
ENGINES: dict[str, Callable[[Settings], Engine]] = {
    "llamacpp": llamacpp_engine,
    "fake": lambda cfg: ScriptedEngine(),
}


def build_app(cfg: Settings, keypair: KeyPair | None = None) -> FastAPI:
    """The composition root: store, engine, scheduler and the server's services, from the settings."""
    make_engine = ENGINES.get(cfg.engine)
    if make_engine is None:
        sys.exit(f"Error: unknown engine {cfg.engine!r} (CORRAL_ENGINE: {', '.join(ENGINES)})")
    cfg.home.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.models_dir)
    scheduler = Scheduler(make_engine(cfg), cfg)
    services = Services.from_settings(cfg, registry_keypair=keypair, hf_endpoint=os.environ.get("HF_ENDPOINT"))
    return create_app(cfg, store, scheduler=scheduler, services=services)


def run_server(cfg: Settings) -> None:
    configure_logging(cfg)
    check_binding(cfg)
    url = cfg.host_url
    log.info("server config models=%s host=%s num_parallel=%d", cfg.models_dir, cfg.host, cfg.num_parallel)
    if cfg.model_defaults:
        log.info("per-model defaults for %s", ", ".join(cfg.model_defaults))
    keypair, created = ensure_keypair(cfg.home)
    if created:
        print(f"Couldn't find '{cfg.home / KEY_NAME}'. Generating new private key.")
        print(f"Your new public key is: \n\n{keypair.public_line}\n")
    app = build_app(cfg, keypair)
    ssl: dict[str, str] = {}
    if cfg.tls_cert and cfg.tls_key:
        ssl = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
    config = uvicorn.Config(
        app,
        host=url.bind_host,
        port=url.port,
        log_level="warning",
        # at SIGTERM inference requests end within SHUTDOWN_GRACE (their runners are stopped, killed
        # if need be); whatever is still open after this (a pull, a push) is cut
        timeout_graceful_shutdown=math.ceil(SHUTDOWN_GRACE) + 1,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
        ws_max_size=cfg.max_body,  # /api/ws messages are capped like JSON bodies
        proxy_headers=False,  # X-Forwarded-For is believed only from trusted_proxies (server/allowlist.py)
        http=deadline_protocol(cfg.header_timeout_seconds),
        **ssl,  # type: ignore[arg-type]
    )
    CorralServer(config, app.state.ctx.scheduler).run()


class CorralServer(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT stop the scheduler at once, before uvicorn's graceful shutdown
    waits for open connections: queued requests get 503, open streams end with an error line,
    in-flight requests get an error response and the runner processes exit, so the connections
    close by themselves and the lifespan shutdown (which awaits the same scheduler stop) follows."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler | None) -> None:
        super().__init__(config)
        self.scheduler = scheduler
        self._stopping_scheduler = False
        self._stopper: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.scheduler is not None and not self._stopping_scheduler:
            self._stopping_scheduler = True
            scheduler = self.scheduler
            loop = asyncio.get_event_loop()

            def stop() -> None:
                self._stopper = loop.create_task(scheduler.shutdown())

            loop.call_soon_threadsafe(stop)
        super().handle_exit(sig, frame)
