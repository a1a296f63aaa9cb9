"""The upstream a pull-through mirror stands in for (`CORRAL_REGISTRY_MIRROR_OF`): manifests from the
store or the upstream, background pulls that fill the store, shared blob downloads. The HTTP side
(the mirror's `/v2` routes, streaming while downloading) is `corral.server.ops.mirror`."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from corral.errors import CorralError, NotFoundError
from corral.names import ModelName
from corral.registry.client import RegistryClient, RegistryOptions, RetryPolicy
from corral.registry.download import BlobDownload, DownloadTuning, shared_download
from corral.registry.pull import pull_model
from corral.store.manifests import Manifest, ManifestError
from corral.store.store import Store

log = logging.getLogger(__name__)
# Requests a client is waiting on give up sooner than background downloads do.
QUICK_RETRY = RetryPolicy(attempts=3, base=0.5)


class UpstreamError(CorralError):
    status = 502


class PullThrough:
    """The upstream a mirror stands in for, and the background pulls that fill the store from it."""

    def __init__(self, store: Store, upstream: str, options: Callable[[bool], RegistryOptions]) -> None:
        self.store = store
        self.scheme, _, self.host = upstream.partition("://")
        self._options = options
        self.tuning = DownloadTuning()
        self._fills: set[str] = set()
        self._lock = threading.Lock()

    def options(self, *, quick: bool = False) -> RegistryOptions:
        """Options for the upstream; never through mirrors (a mirror chain could loop)."""
        opts = dataclasses.replace(self._options(self.scheme == "http"), mirrors=())
        return dataclasses.replace(opts, retry=QUICK_RETRY) if quick else opts

    def name(self, ns: str, model: str, tag: str = "latest") -> ModelName | None:
        return ModelName.try_parse(f"{self.scheme}://{self.host}/{ns}/{model}:{tag}")

    def manifest(self, name: ModelName) -> tuple[bytes, bool]:
        """(manifest bytes, whether they came from the store); NotFoundError if upstream lacks it."""
        if self.store.exists(name):
            return self.store.read_manifest(name)[1], True
        try:
            with RegistryClient(name, self.options(quick=True)) as client:
                raw = client.get_manifest()
            Manifest.from_bytes(raw)
        except NotFoundError:
            raise
        except (CorralError, ManifestError) as e:
            raise UpstreamError(f"upstream {self.host}: {e}") from None
        return raw, False

    def fill(self, name: ModelName, raw: bytes) -> None:
        """Pull `name` (whose manifest is `raw`) into the store in the background, once at a time."""
        key = str(name)
        with self._lock:
            if key in self._fills:
                return
            self._fills.add(key)
        threading.Thread(target=self._fill, args=(name, raw), name=f"corral-mirror-{name.model}",
                         daemon=True).start()

    def _fill(self, name: ModelName, raw: bytes) -> None:
        try:
            for _ in pull_model(self.store, name, self.options(), tuning=self.tuning, manifest=raw):
                pass
            log.info("mirrored %s from %s", name.display_shortest(), self.host)
        except Exception as e:  # the next pull of this name tries again
            log.warning("mirroring %s from %s failed: %s", name.display_shortest(), self.host, e)
        finally:
            with self._lock:
                self._fills.discard(str(name))

    def blob_size(self, name: ModelName, digest: str) -> int | None:
        try:
            with RegistryClient(name, self.options(quick=True)) as client:
                return client.head_blob(digest)
        except CorralError as e:
            raise UpstreamError(f"upstream {self.host}: {e.message}") from None

    def download(self, name: ModelName, digest: str, size: int) -> BlobDownload:
        """The shared download of `digest` into the store, started from the upstream if none runs."""
        opts = self.options()

        def run(dl: BlobDownload) -> None:
            with RegistryClient(name, opts) as client:
                dl.run(client)

        dl, started = shared_download(self.store.blobs, digest, size, self.tuning, run)
        if started:
            log.info("mirror: fetching %s (%d bytes) from %s", digest[:19], size, self.host)
        return dl
