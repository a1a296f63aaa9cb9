"""`pull_model`: fetch a manifest and its blobs from an OCI registry into the store (spec §7).

Owns the pull sequence and its progress statuses: `pulling manifest`, `pulling <12hex>` per
layer (every ~60 ms), `verifying sha256 digest`, `writing manifest`, `removing unused layers`,
`success`. Blob transfer, resume and sharing live in `corral.registry.download`. The manifest
is written last, byte-for-byte as received, only after every blob is in place and verified;
until then the previously stored version of the model is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

from corral.errors import CorralError, NotFoundError
from corral.names import ModelName
from corral.registry.client import RegistryClient, RegistryOptions
from corral.registry.download import BlobDownload, DownloadTuning, shared_download
from corral.schemas.native import ProgressResponse
from corral.store.blobs import normalize_digest, touch
from corral.store.manifests import Layer, Manifest, ManifestError
from corral.store.store import Store

TICK = 0.06


def pull_model(
    store: Store,
    name: ModelName,
    opts: RegistryOptions,
    *,
    tuning: DownloadTuning | None = None,
) -> Iterator[ProgressResponse]:
    """Pull `name` into `store`, yielding progress; raises CorralError on failure."""
    tuning = tuning or DownloadTuning()
    with RegistryClient(name, opts) as client, store.pinning() as pin:
        yield ProgressResponse(status="pulling manifest")
        raw = client.get_manifest()
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

