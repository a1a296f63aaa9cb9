"""Plumbing every CLI verb shares: the consoles, the settings edge, the client and `fail`."""

from __future__ import annotations

import sys

from rich.console import Console

from corral.client import Client
from corral.config import Settings
from corral.configfile import load_settings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def settings() -> Settings:
    return load_settings()


def client(cfg: Settings | None = None) -> Client:
    cfg = cfg or settings()
    verify: bool | str = str(cfg.ca_bundle) if cfg.ca_bundle else True
    return Client(cfg.host_url.url, api_key=cfg.api_key, verify=verify)


def fail(message: str) -> None:
    err_console.print(f"Error: {message}", markup=False, soft_wrap=True)
    sys.exit(1)
