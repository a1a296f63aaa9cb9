"""`corral keys`: create, list and revoke API keys in the local keys file (`$CORRAL_HOME/keys.json`).

Run on the server machine by its administrator; a running server picks up changes without a
restart. The plain key is printed once, at creation; only its hash is stored.
"""

from __future__ import annotations

import json

import click
from rich.console import Console

from corral.auth.keys import KEYS_FILE, KeyStore
from corral.cli.format import table
from corral.config import Settings

console = Console(highlight=False)


def key_store() -> KeyStore:
    return KeyStore(Settings.from_env().home / KEYS_FILE)


@click.group("keys")
def keys() -> None:
    """Manage API keys (stored hashed in $CORRAL_HOME/keys.json)."""


@keys.command("create")
@click.option("--scope", "scopes", required=True,
              help="comma separated: read, infer, manage, admin (admin implies all, manage implies read)")
@click.option("--name", default="", help="who or what the key is for")
def create(scopes: str, name: str) -> None:
    """Create a key and print it (once)."""
    record, plain = key_store().create(scopes, name=name)
    console.print(f"Created key {record.id} ({', '.join(record.scopes)}){f' for {name}' if name else ''}.")
    console.print("Store it now; it cannot be shown again:")
    click.echo(plain)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_keys(as_json: bool) -> None:
    """List keys (ids, names, scopes; never the keys themselves)."""
    records = key_store().records()
    if as_json:
        click.echo(json.dumps([r.public() for r in records], indent=2))
        return
    rows = [[r.id, r.name, ",".join(r.scopes), r.created_at] for r in records]
    click.echo(table(["ID", "NAME", "SCOPES", "CREATED"], rows))


@keys.command("revoke")
@click.argument("key")
def revoke(key: str) -> None:
    """Revoke a key by id (or by its name when unique)."""
    record = key_store().revoke(key)
    console.print(f"Revoked key {record.id}{f' ({record.name})' if record.name else ''}.")
