"""`corral serve`: assemble settings, store, engine and scheduler, then run uvicorn.

This is the edge: the only place besides `Settings.from_env` that knows how the pieces fit.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from corral.config import Settings
from corral.engine.llamacpp.proc import LlamaCppEngine
from corral.scheduler import Scheduler
from corral.server.app import create_app
from corral.store.store import Store

log = logging.getLogger("corral")


def configure_logging(cfg: Settings) -> None:
    level = logging.DEBUG if cfg.debug else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="time=%(asctime)s level=%(levelname)s source=%(name)s msg=%(message)s",
    )


def build_app(cfg: Settings):  # type: ignore[no-untyped-def]
    cfg.home.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.models_dir)
    engine = LlamaCppEngine(log_dir=cfg.home / "logs", load_timeout=cfg.load_timeout_seconds)
    scheduler = Scheduler(engine, cfg)
    return create_app(cfg, store, scheduler=scheduler)


def run_server(cfg: Settings) -> None:
    configure_logging(cfg)
    url = cfg.host_url
    log.info("server config models=%s host=%s num_parallel=%d", cfg.models_dir, cfg.host, cfg.num_parallel)
    app = build_app(cfg)
    ssl: dict[str, str] = {}
    if cfg.tls_cert and cfg.tls_key:
        ssl = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
    uvicorn.run(
        app,
        host=url.bind_host,
        port=url.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        **ssl,  # type: ignore[arg-type]
    )
