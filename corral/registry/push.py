"""`push_model`: upload a stored model's blobs and manifest to an OCI registry (spec §7).

Owns the push sequence and its statuses: `retrieving manifest`, `pushing <12hex>` per layer
(HEAD first: present blobs are reported complete; a layer with `from` tries a cross-repository
mount), chunked `PATCH` uploads with `Content-Range`, the final `PUT ?digest=`, then
`pushing manifest` and `success`. Does not modify the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urljoin

from corral.errors import CorralError
from corral.names import ModelName
from corral.registry.client import MANIFEST_V2, RegistryClient, RegistryOptions
from corral.schemas.native import ProgressResponse
from corral.store.manifests import Layer
from corral.store.store import Store

CHUNK = 64 * 1024 * 1024


def push_model(
    store: Store, name: ModelName, opts: RegistryOptions, *, chunk_size: int = CHUNK
) -> Iterator[ProgressResponse]:
    """Push `name` from `store`; raises CorralError on failure."""
    yield ProgressResponse(status="retrieving manifest")
    manifest, raw = store.read_manifest(name)
    with RegistryClient(name, opts) as client:
        for layer in manifest.unique_layers():
            yield from _push_layer(store, client, layer, chunk_size)
        yield ProgressResponse(status="pushing manifest")
        headers = {"Content-Type": MANIFEST_V2}
        url = client.manifest_url()
        resp = client.with_retries(
            "pushing manifest", lambda: client.send("PUT", url, headers=headers, content=raw)
        )
        if resp.status_code not in (200, 201, 202):
            raise CorralError(f"pushing manifest: registry returned {resp.status_code}: {resp.text[:200]}")
    yield ProgressResponse(status="success")


def _push_layer(
    store: Store, client: RegistryClient, layer: Layer, chunk_size: int
) -> Iterator[ProgressResponse]:
    status = f"pushing {layer.digest[7:19]}"
    path = store.blobs.path(layer.digest)
    size = path.stat().st_size
    if client.head_blob(layer.digest) is not None:
        yield ProgressResponse(status=status, digest=layer.digest, total=size, completed=size)
        return
    query = ""
    if layer.from_:
        query = "?" + urlencode({"mount": layer.digest, "from": _repo_of(layer.from_)})
    resp = client.with_retries(status, lambda: client.send("POST", client.url("blobs/uploads/") + query))
    if resp.status_code == 201:
        yield ProgressResponse(status=status, digest=layer.digest, total=size, completed=size)
        return
    if resp.status_code != 202:
        raise CorralError(f"{status}: registry returned {resp.status_code} starting the upload")
    location = urljoin(str(resp.url), resp.headers.get("Location", ""))
    yield ProgressResponse(status=status, digest=layer.digest, total=size, completed=0)
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            data = f.read(chunk_size)
            location = _patch(client, location, data, offset)
            offset += len(data)
            yield ProgressResponse(status=status, digest=layer.digest, total=size, completed=offset)
    sep = "&" if "?" in location else "?"
    final = f"{location}{sep}{urlencode({'digest': layer.digest})}"
    resp = client.with_retries(status, lambda: client.send("PUT", final))
    if resp.status_code not in (200, 201, 204):
        raise CorralError(f"{status}: registry returned {resp.status_code} completing the upload")


def _patch(client: RegistryClient, location: str, data: bytes, offset: int) -> str:
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{offset}-{offset + len(data) - 1}",
        "X-Redirect-Uploads": "1",
    }
    resp = client.with_retries(
        "upload", lambda: client.send("PATCH", location, headers=headers, content=data)
    )
    if resp.status_code in (307, 308):
        target = urljoin(location, resp.headers.get("Location", ""))
        resp = client.with_retries("upload", lambda: client.send("PUT", target, content=data))
        return location
    if resp.status_code not in (202, 204):
        raise CorralError(f"upload: registry returned {resp.status_code}: {resp.text[:200]}")
    return urljoin(location, str(resp.headers.get("Location", location)))


def _repo_of(from_: str) -> str:
    """`from` is a parent blob path or model name; mount from its `<ns>/<model>` when it names one."""
    parsed = ModelName.try_parse(Path(from_).name if "/" in from_ and from_.startswith("/") else from_)
    return f"{parsed.namespace}/{parsed.model}" if parsed else from_
