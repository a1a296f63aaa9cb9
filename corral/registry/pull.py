"""`pull_model`: fetch a manifest and its blobs from an OCI registry into the store (spec §7).

Owns the pull sequence and its progress statuses: `pulling manifest`, `pulling <12hex>` per
layer (every ~60 ms), `verifying sha256 digest`, `writing manifest`, `removing unused layers`,
`success`. Blob transfer, resume and sharing live in `corral.registry.download`. The manifest
is written last, byte-for-byte as received, only after every blob is in place and verified;
until then the previously stored version of the model is untouched.

With mirrors for the name's registry host (`RegistryOptions.mirrors`), each is tried first, in
order; any failure there (unreachable, unauthorized, missing, a bad blob) falls back to the next
and finally to the registry itself, with a status line saying so. Blobs already fetched from a
mirror are kept (they are verified by digest), and a partial one resumes from the upstream.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

from corral.errors import CorralError, NotFoundError
from corral.names import ModelName
from corral.registry.client import Mirror, RegistryClient, RegistryOptions
from corral.registry.download import BlobDownload, DownloadTuning, shared_download
from corral.schemas.native import ProgressResponse
from corral.store.blobs import normalize_digest, touch
from corral.store.manifests import Layer, Manifest, ManifestError
from corral.store.store import Store

TICK = 0.06
log = logging.getLogger(__name__)


def pull_model(
    store: Store,
    name: ModelName,
    opts: RegistryOptions,
    *,
    tuning: DownloadTuning | None = None,
    manifest: bytes | None = None,
) -> Iterator[ProgressResponse]:
    """Pull `name` into `store`, yielding progress; raises CorralError on failure.

    `manifest`: the manifest's bytes when the caller already fetched them from `name`'s registry
    (a pull-through mirror does); mirrors are then not consulted.
    """
    tuning = tuning or DownloadTuning()
    for mirror in opts.mirrors_for(name) if manifest is None else []:
        try:
            yield from _pull(store, name, mirror.source(name), mirror.options(opts), tuning)
            return
        except CorralError as e:
            yield _mirror_failed(mirror, name, e)
    yield from _pull(store, name, name, dataclasses.replace(opts, mirrors=()), tuning, manifest)


def _mirror_failed(mirror: Mirror, name: ModelName, e: CorralError) -> ProgressResponse:
    log.warning("pull %s through mirror %s failed: %s; trying %s", name, mirror.url, e.message, name.host)
    return ProgressResponse(status=f"mirror {mirror.url} failed ({e.message}); pulling from {name.host}")


def _pull(
    store: Store,
    name: ModelName,
    source: ModelName,
    opts: RegistryOptions,
    tuning: DownloadTuning,
    raw_manifest: bytes | None = None,
) -> Iterator[ProgressResponse]:
    """Fetch `source`'s manifest (unless given) and blobs and store them as `name`."""
    with RegistryClient(source, opts) as client, store.pinning() as pin:
        yield ProgressResponse(status="pulling manifest")
        raw = client.get_manifest() if raw_manifest is None else raw_manifest
        try:
            manifest = Manifest.from_bytes(raw)
            for layer in manifest.all_layers():
                layer.digest = normalize_digest(layer.digest)
            layers = manifest.unique_layers()
        except (ManifestError, CorralError) as e:
            raise CorralError(f"pull model manifest: invalid manifest: {e}") from None
        for layer in layers:
            yield from _pull_layer(store, client, layer, tuning)
            pin(layer.digest)
        yield ProgressResponse(status="verifying sha256 digest")
        for layer in layers:
            if not store.blobs.exists(layer.digest):
                raise CorralError(f"blob {layer.digest} missing after download")
        old: set[str] = set()
        if store.exists(name):
            try:
                old = store.read_manifest(name)[0].digests()
            except CorralError:
                old = set()
        yield ProgressResponse(status="writing manifest")
        store.write_manifest(name, raw)
        unused = old - manifest.digests()
        if unused:
            yield ProgressResponse(status="removing unused layers")
            store.remove_unreferenced(unused)
        yield ProgressResponse(status="success")


def _pull_layer(
    store: Store, client: RegistryClient, layer: Layer, tuning: DownloadTuning
) -> Iterator[ProgressResponse]:
    status = f"pulling {layer.digest[7:19]}"
    if store.blobs.exists(layer.digest):
        touch(store.blobs.path(layer.digest))
        yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
        return
    size = client.head_blob(layer.digest)
    if size is None:
        raise NotFoundError(f"pull model manifest: blob {layer.digest} not found in the registry")
    if size != layer.size:
        raise CorralError(
            f"blob {layer.digest}: registry reports {size} bytes, manifest says {layer.size}"
        )
    dl, _ = shared_download(store.blobs, layer.digest, layer.size, tuning, lambda d: d.run(client))
    yield from _watch(dl, status, layer)


def _watch(dl: BlobDownload, status: str, layer: Layer) -> Iterator[ProgressResponse]:
    last = -1
    while not dl.done.wait(TICK):
        done = dl.completed
        if done != last:
            last = done
            yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=done)
    if dl.error is not None:
        if isinstance(dl.error, CorralError):
            raise dl.error
        raise CorralError(f"download {layer.digest}: {dl.error}") from dl.error
    yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)

