"""The model store: `<root>/manifests/<host>/<namespace>/<model>/<tag>` plus `<root>/blobs/`.

Owns name -> manifest resolution (case-insensitive, part by part, as Ollama's `getExistingName`),
atomic manifest writes, listing, loading a model's layers into a `Model`, copy, delete and
pruning (spec §6). Byte-compatible with Ollama's layout, so the root may be an existing
`~/.ollama/models`. Takes an explicit root; never reads the environment and never imports the
server, scheduler, engines, client or CLI. Creating models lives in `corral.store.create`,
the shipped models in `corral.store.bundled`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.errors import BadRequestError, CorralError, InvalidNameError, ModelNotFoundError
from corral.fsutil import fsync_dir
from corral.names import ModelName, is_valid_part
from corral.store import media
from corral.store.blobs import BLOB_NAME_RE, BlobStore, normalize_digest
from corral.store.diskspace import disk_full_guard
from corral.store.manifests import ConfigV2, Manifest, ManifestError

log = logging.getLogger(__name__)

_PART_KINDS = ("host", "namespace", "model", "tag")
_MANIFEST_TEMP_MARK = ".tmp-"
_SHARED: dict[str, tuple[threading.RLock, Counter[str]]] = {}
_SHARED_GUARD = threading.Lock()


def _shared_for(root: Path) -> tuple[threading.RLock, Counter[str]]:
    """One lock and one pin count per store root, shared by every Store on that root."""
    key = str(root.resolve())
    with _SHARED_GUARD:
        return _SHARED.setdefault(key, (threading.RLock(), Counter()))


def _name(name: str | ModelName) -> ModelName:
    if isinstance(name, ModelName):
        if not name.is_valid():
            raise InvalidNameError()
        return name
    return ModelName.parse(name)


def _given(name: str | ModelName) -> str:
    return name if isinstance(name, str) else name.display_shortest()


def _mtime_datetime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime).astimezone()


@dataclass
class ModelEntry:
    """One row of `list_models` (what /api/tags needs)."""

    name: ModelName
    digest: str
    size: int
    modified_at: datetime
    manifest: Manifest
    config: ConfigV2 | None


@dataclass
class Model:
    """A resolved model: everything the server needs to show or run it."""

    name: ModelName
    manifest: Manifest
    manifest_digest: str
    config: ConfigV2
    modified_at: datetime
    model_path: Path | None
    adapters: list[Path]
    projectors: list[Path]
    template: str | None
    system: str | None
    params: dict[str, Any]
    messages: list[dict[str, Any]]
    license: list[str]
    parent_model: str
    draft: Path | None = None  # a draft model's GGUF (.draft layer) for speculative decoding


class Store:
    """A model store rooted at an explicit directory (Ollama's `OLLAMA_MODELS`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root / "blobs")
        self.manifests_root = self.root / "manifests"
        self.lock, self._pins = _shared_for(self.root)

    @contextmanager
    def pinning(self) -> Iterator[Callable[[str], None]]:
        """Yield `pin(digest)`: pinned blobs survive delete/prune/replace until the block ends.

        A create or import pins each blob (under `lock`, right after writing or finding it) so
        a concurrent delete cannot remove it before the new manifest references it.
        """
        pinned: list[str] = []

        def pin(digest: str) -> None:
            digest = normalize_digest(digest)
            with self.lock:
                self._pins[digest] += 1
                pinned.append(digest)

        try:
            yield pin
        finally:
            with self.lock:
                for digest in pinned:
                    self._pins[digest] -= 1
                    if self._pins[digest] <= 0:
                        del self._pins[digest]

    # Paths and names -------------------------------------------------------------------------
    def manifest_path(self, name: ModelName) -> Path:
        """`manifests/<host>/<namespace>/<model>/<tag>` exactly as spelled in `name`."""
        name = _name(name)
        path = self.manifests_root.joinpath(*name.parts)
        self._check_inside(path)
        return path

    def _check_inside(self, path: Path) -> None:
        base = os.path.abspath(self.manifests_root)
        if os.path.commonpath([base, os.path.abspath(path)]) != base:
            raise InvalidNameError()

    def _find(self, name: ModelName, *, want_file: bool) -> tuple[Path, list[str]]:
        """Walk the tree part by part, preferring an exact match, else a case-insensitive one.

        Returns the deepest path and the on-disk spelling of each part (the given spelling
        where nothing exists yet).
        """
        path = self.manifests_root
        spelled: list[str] = []
        for i, part in enumerate(name.parts):
            last = i == len(name.parts) - 1
            found = part
            if not (path / part).exists():
                with contextlib.suppress(OSError):
                    for entry in sorted(os.listdir(path)):
                        if entry.lower() == part.lower() and (path / entry).is_file() == (last and want_file):
                            found = entry
                            break
            spelled.append(found)
            path = path / found
        self._check_inside(path)
        return path, spelled

    def _existing_path(self, name: ModelName) -> Path | None:
        path, _ = self._find(name, want_file=True)
        return path if path.is_file() else None

    def resolve(self, name: str | ModelName) -> ModelName:
        """The stored spelling of an existing model; ModelNotFoundError if there is none."""
        parsed = _name(name)
        path, spelled = self._find(parsed, want_file=True)
        if not path.is_file():
            raise ModelNotFoundError(_given(name))
        host, namespace, model, tag = spelled
        return ModelName(host=host, namespace=namespace, model=model, tag=tag, scheme=parsed.scheme)

    def exists(self, name: str | ModelName) -> bool:
        return self._existing_path(_name(name)) is not None

    # Manifests -------------------------------------------------------------------------------
    def read_manifest(self, name: str | ModelName) -> tuple[Manifest, bytes]:
        path = self._existing_path(_name(name))
        if path is None:
            raise ModelNotFoundError(_given(name))
        data = path.read_bytes()
        return Manifest.from_bytes(data), data

    def write_manifest(self, name: ModelName, manifest: Manifest | bytes) -> None:
        """Atomically write a manifest; bytes (a pulled manifest) are written as they are.

        Every referenced blob must already exist. A manifest stored under a case-variant of
        `name` is replaced rather than duplicated.
        """
        name = _name(name)
        if isinstance(manifest, Manifest):
            parsed, data = manifest, manifest.to_bytes()
        else:
            parsed, data = Manifest.from_bytes(manifest), bytes(manifest)
        with self.lock:
            for digest in sorted(parsed.digests()):
                if not self.blobs.exists(digest):
                    raise BadRequestError(f"blob {digest} not found")
            path, _ = self._find(name, want_file=True)
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            temp = path.parent / f".{path.name}{_MANIFEST_TEMP_MARK}{secrets.token_hex(6)}"
            try:
                with disk_full_guard(path, "writing manifest"):
                    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(temp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            fsync_dir(path.parent)

    def _iter_manifest_files(self) -> Iterator[tuple[ModelName, Path]]:
        """Every file at `manifests/*/*/*/*` whose path is a valid name (others are skipped).

        A directory that cannot be listed (EMFILE, EACCES, EIO) raises rather than looking
        empty: a listing that silently drops models is worse than an error.
        """
        if not self.manifests_root.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(self.manifests_root, onerror=_walk_error):
            rel = Path(dirpath).relative_to(self.manifests_root).parts
            if len(rel) != 3:
                continue
            for fname in sorted(filenames):
                parts = (*rel, fname)
                if not all(is_valid_part(k, p) for k, p in zip(_PART_KINDS, parts, strict=True)):
                    if _MANIFEST_TEMP_MARK not in fname:
                        log.warning("skipping manifest with invalid name: %s", "/".join(parts))
                    continue
                host, namespace, model, tag = parts
                yield ModelName(host, namespace, model, tag), Path(dirpath) / fname

    def _read_config(self, manifest: Manifest) -> ConfigV2 | None:
        if not manifest.config.digest:
            return None
        return ConfigV2.from_bytes(self.blobs.path(manifest.config.digest).read_bytes())

    def list_models(self) -> list[ModelEntry]:
        """All models, newest first; corrupt manifests are logged and skipped.

        An I/O error other than a vanished file (out of file descriptors, permissions, EIO) is
        raised as a `CorralError` naming the path, as Ollama's `Manifests` does.
        """
        entries: list[ModelEntry] = []
        for name, path in self._iter_manifest_files():
            try:
                data = path.read_bytes()
                manifest = Manifest.from_bytes(data)
                manifest.digests()
                config = self._read_config(manifest)
                modified = _mtime_datetime(path)
            except FileNotFoundError as e:  # deleted while listed, or its config blob is missing
                log.warning("bad manifest %s: %s", name.display_shortest(), e)
                continue
            except OSError as e:
                raise _read_error(path, e) from e
            except CorralError as e:
                log.warning("bad manifest %s: %s", name.display_shortest(), e)
                continue
            entries.append(
                ModelEntry(
                    name=name,
                    digest=hashlib.sha256(data).hexdigest(),
                    size=manifest.size(),
                    modified_at=modified,
                    manifest=manifest,
                    config=config,
                )
            )
        entries.sort(key=lambda e: e.modified_at, reverse=True)
        return entries

    # Models ----------------------------------------------------------------------------------
    def load_model(self, name: str | ModelName) -> Model:
        """Read a model's manifest, config and text layers (spec §6, Ollama's GetModel)."""
        resolved = self.resolve(name)
        manifest, data = self.read_manifest(resolved)
        path = self.manifest_path(resolved)
        try:
            config = self._read_config(manifest) or ConfigV2()
        except FileNotFoundError:
            raise CorralError(f"config blob {manifest.config.digest} not found") from None
        model = Model(
            name=resolved,
            manifest=manifest,
            manifest_digest=hashlib.sha256(data).hexdigest(),
            config=config,
            modified_at=_mtime_datetime(path),
            model_path=None,
            adapters=[],
            projectors=[],
            template=None,
            system=None,
            params={},
            messages=[],
            license=[],
            parent_model="",
        )
        for layer in manifest.layers:
            self._apply_layer(model, layer.media_type, layer.digest, layer.from_)
        return model

    def _read_text(self, digest: str) -> str:
        try:
            return self.blobs.path(digest).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CorralError(f"blob {digest} not found") from None

    def read_json_blob(self, digest: str) -> Any:
        try:
            return json.loads(self._read_text(digest))
        except ValueError as e:
            raise CorralError(f"invalid layer {digest}: {e}") from None

    def _apply_layer(self, model: Model, media_type: str, digest: str, from_: str | None) -> None:
        if media_type == media.MODEL:
            model.model_path = self.blobs.path(digest)
            model.parent_model = from_ or ""
        elif media_type == media.ADAPTER:
            model.adapters.append(self.blobs.path(digest))
        elif media_type == media.PROJECTOR:
            model.projectors.append(self.blobs.path(digest))
        elif media_type == media.DRAFT:
            model.draft = self.blobs.path(digest)
        elif media_type in (media.TEMPLATE, media.PROMPT):
            model.template = self._read_text(digest)
        elif media_type == media.SYSTEM:
            model.system = self._read_text(digest)
        elif media_type == media.PARAMS:
            params = self.read_json_blob(digest)
            model.params = params if isinstance(params, dict) else {}
        elif media_type == media.MESSAGES:
            messages = self.read_json_blob(digest)
            model.messages = (
                [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
            )
        elif media_type == media.LICENSE:
            model.license.append(self._read_text(digest))
        elif media_type == media.EMBED:
            log.warning(
                "model %s contains embeddings, but embeddings in modelfiles have been deprecated"
                " and will be ignored",
                model.name.display_shortest(),
            )

    def copy(self, src: str | ModelName, dst: str | ModelName) -> None:
        """Copy a manifest to a new name (blobs are shared, not copied)."""
        _, data = self.read_manifest(src)
        self.write_manifest(_name(dst), data)

    # Removal ---------------------------------------------------------------------------------
    def referenced_digests(self, skip: Path | None = None) -> set[str] | None:
        """Digests referenced by every manifest (except `skip`); None if any is corrupt or unreadable."""
        refs: set[str] = set()
        try:
            for name, path in self._iter_manifest_files():
                if skip is not None and path == skip:
                    continue
                try:
                    refs |= Manifest.from_bytes(path.read_bytes()).digests()
                except (OSError, CorralError) as e:
                    log.warning("corrupt manifest %s: %s", name.display_shortest(), e)
                    return None
        except CorralError as e:  # a manifest directory could not be listed
            log.warning("%s", e)
            return None
        return refs

    def delete(self, name: str | ModelName) -> None:
        """Remove a manifest, its empty parent dirs, and blobs no other manifest references."""
        parsed = _name(name)
        with self.lock:
            path = self._existing_path(parsed)
            if path is None:
                raise ModelNotFoundError(_given(name))
            try:
                candidates = Manifest.from_bytes(path.read_bytes()).digests()
            except ManifestError:
                candidates = set()
            os.unlink(path)
            self._prune_empty_dirs(path.parent)
            self.remove_unreferenced(candidates)

    def remove_unreferenced(self, candidates: set[str]) -> int:
        """Delete those of `candidates` that no manifest references; returns how many.

        Removes nothing (with a warning) if any manifest is corrupt: its references are unknown.
        """
        if not candidates:
            return 0
        removed = 0
        with self.lock:
            refs = self.referenced_digests()
            if refs is None:
                log.warning("not removing unused layers: a manifest is corrupt")
                return 0
            for digest in sorted(candidates - refs - set(self._pins)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.blobs.path(digest))
                    removed += 1
        return removed

    def _prune_empty_dirs(self, start: Path) -> None:
        d = start
        while d != self.manifests_root and self.manifests_root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def prune(self, *, grace_seconds: float = 3600, now: float | None = None) -> int:
        """Spec §6 pruning; returns how many files and directories were removed.

        Skipped entirely (with a warning) if any manifest is corrupt. Removes unreferenced
        blobs older than the grace period, stale files with invalid names in `blobs/` (temp
        files, partial downloads) and stale manifest temp files, then empty manifest dirs.
        """
        cutoff = (time.time() if now is None else now) - grace_seconds
        with self.lock:
            refs = self.referenced_digests()
            if refs is None:
                log.warning("skipping prune: a manifest is corrupt")
                return 0
            removed = self._prune_blobs(refs | set(self._pins), cutoff)
            removed += self._prune_manifest_tree(cutoff)
        return removed

    def _prune_blobs(self, refs: set[str], cutoff: float) -> int:
        removed = 0
        for fname in self.blobs.list_names():
            path = self.blobs.root / fname
            if BLOB_NAME_RE.fullmatch(fname):
                digest = "sha256:" + fname[7:].lower()
                if digest in refs:
                    continue
            if _older_than(path, cutoff):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed

    def _prune_manifest_tree(self, cutoff: float) -> int:
        if not self.manifests_root.is_dir():
            return 0
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.manifests_root, topdown=False):
            for fname in filenames:
                path = Path(dirpath) / fname
                if fname.startswith(".") and _MANIFEST_TEMP_MARK in fname and _older_than(path, cutoff):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed += 1
            d = Path(dirpath)
            if d != self.manifests_root:
                try:
                    d.rmdir()
                    removed += 1
                except OSError:
                    pass
        return removed


def _read_error(path: Path, e: OSError) -> CorralError:
    return CorralError(f"cannot read model store at {path}: {e.strerror or e}")


def _walk_error(e: OSError) -> None:
    if isinstance(e, FileNotFoundError):
        return
    raise _read_error(Path(e.filename or "?"), e) from e


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False
