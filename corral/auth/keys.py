"""API keys: creation, listing, revocation and verification against a JSON file.

A key looks like `crl_<id>_<secret>`; only the SHA-256 of the whole key is stored, with the id,
name, scopes and creation time, in `<home>/keys.json` (mode 0600, replaced atomically under an
exclusive lock on `<home>/keys.json.lock`, so concurrent CLI and server writers never lose an
update). The plain key is returned once, by `create`. The server re-reads the file when it changes, so keys created
or revoked with the CLI take effect without a restart. Does not know about HTTP.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from corral.auth.scopes import SCOPES, parse_scopes
from corral.errors import BadRequestError, CorralError, NotFoundError
from corral.fsutil import fsync_dir

PREFIX = "crl_"
KEYS_FILE = "keys.json"
_RACY_SECONDS = 2


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    hash: str

    def public(self) -> dict[str, Any]:
        """What `keys list` shows: everything but the hash."""
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "created_at": self.created_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(id=str(data["id"]), name=str(data.get("name", "")), scopes=tuple(data["scopes"]),
                   created_at=str(data.get("created_at", "")), hash=str(data["hash"]))


def split_key(plain: str) -> str | None:
    """The id inside a well-formed key, else None."""
    if not plain.startswith(PREFIX):
        return None
    key_id, sep, secret = plain[len(PREFIX):].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id


class KeyStore:
    """The keys file. Safe across threads and processes; cheap to query.

    Writers (`create`, `revoke`; the CLI and the server alike) hold an exclusive `flock` on
    `keys.json.lock` while they read, modify and atomically replace `keys.json`, so concurrent
    writers never lose each other's updates. Readers take no lock: the file is only ever
    replaced whole. The cache is keyed by the file's inode, size and times, and is not trusted
    while the file is younger than `_RACY_SECONDS` (a rewrite within one timestamp tick could
    keep all of those equal, as git's "racily clean" index entries).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._keys: dict[str, KeyRecord] = {}

    # reading -----------------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _load(self) -> dict[str, KeyRecord]:
        try:
            data = json.loads(self.path.read_text())
            return {r.id: r for r in (KeyRecord.from_json(d) for d in data.get("keys", []))}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorralError(f"cannot read keys file {self.path}: {exc}") from None

    def _refresh(self) -> dict[str, KeyRecord]:
        stamp = self._stat()
        if stamp == self._stamp and not _racy(stamp):
            return self._keys
        keys = self._load() if stamp is not None else {}
        self._keys, self._stamp = keys, stamp
        return keys

    def records(self) -> list[KeyRecord]:
        with self._lock:
            return sorted(self._refresh().values(), key=lambda r: r.created_at)

    def has_keys(self) -> bool:
        with self._lock:
            return bool(self._refresh())

    def verify(self, plain: str) -> KeyRecord | None:
        """The record of a valid key, else None (constant-time hash comparison)."""
        key_id = split_key(plain)
        if key_id is None:
            return None
        with self._lock:
            record = self._refresh().get(key_id)
        if record is None or not hmac.compare_digest(record.hash, hash_key(plain)):
            return None
        return record

    # writing -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, KeyRecord]]:
        """Hold the file lock; yield the keys as they are on disk now.

        Each call opens its own descriptor, so the flock also excludes other threads.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._load()
        finally:
            os.close(fd)  # releases the flock

    def create(self, scopes: str | list[str], name: str = "") -> tuple[KeyRecord, str]:
        """Make a key; returns its record and the plain key (shown to the user once)."""
        granted = parse_scopes(scopes)
        if len(name) > 100 or any(ord(c) < 32 for c in name):
            raise BadRequestError("key name must be at most 100 printable characters")
        with self._locked() as keys:
            key_id = secrets.token_hex(6)
            while key_id in keys:
                key_id = secrets.token_hex(6)
            plain = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            record = KeyRecord(id=key_id, name=name, scopes=tuple(s for s in SCOPES if s in granted),
                               created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               hash=hash_key(plain))
            keys[key_id] = record
            self._write(keys)
        return record, plain

    def revoke(self, id_or_name: str) -> KeyRecord:
        """Remove a key by id (or by name when exactly one key has it)."""
        with self._locked() as keys:
            record = keys.get(id_or_name)
            if record is None:
                named = [r for r in keys.values() if r.name and r.name == id_or_name]
                if len(named) > 1:
                    raise BadRequestError(f'{len(named)} keys are named "{id_or_name}"; revoke by id')
                record = named[0] if named else None
            if record is None:
                raise NotFoundError(f'key "{id_or_name}" not found')
            del keys[record.id]
            self._write(keys)
        return record

    def _write(self, keys: dict[str, KeyRecord]) -> None:
        """Replace the file atomically (temp file, fsync, rename, fsync dir); mode 0600."""
        body = json.dumps({"keys": [asdict(r) | {"scopes": list(r.scopes)} for r in keys.values()]}, indent=2)
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(body + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(self.path.parent)
        with self._lock:
            self._keys, self._stamp = dict(keys), self._stat()


def _racy(stamp: tuple[int, int, int, int] | None) -> bool:
    """Whether a file with this stamp may have been rewritten without its stamp changing."""
    return stamp is not None and time.time_ns() - max(stamp[1], stamp[2]) < _RACY_SECONDS * 1_000_000_000
