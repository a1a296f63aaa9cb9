"""`corral config show`: the effective settings and where each value came from."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from corral.cli.format import table
from corral.configfile import describe, load_config

console = Console(highlight=False)


@click.group()
def config() -> None:
    """Inspect the configuration (config file, CORRAL_* variables, defaults)."""


@config.command()
@click.option("--config", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default $CORRAL_CONFIG, else $CORRAL_HOME/config.toml when present)")
def show(path: Path | None) -> None:
    """Print every setting, its value and its source (default, file:line or env VAR)."""
    loaded = load_config(path=path)
    console.print(f"config file: {loaded.path if loaded.path is not None else '(none)'}", markup=False, soft_wrap=True)
    rows = [list(row) for row in describe(loaded)]
    console.print(table(["KEY", "VALUE", "SOURCE"], rows), markup=False, soft_wrap=True)
