"""Pull-through mirror: `/v2` pulls answered from the store, and from an upstream registry for
what the store lacks (`CORRAL_REGISTRY_MIRROR_OF`; Docker's registry mirrors work the same way).

Owns the mirror's manifest and blob read routes. They are mounted ahead of
`corral.server.ops.registry_api`'s `/v2` routes (which keep pushes and `/v2/`), so they take
precedence while mirroring. Repository `<ns>/<model>:<tag>` is the upstream's, stored under the
upstream's host name.

- A manifest the store has is served from it; the upstream is not asked (tags are not
  refreshed: re-pull or delete on the mirror to refresh one). A manifest it lacks is fetched
  from the upstream and answered at once, and the model is then pulled into the store in the
  background with the ordinary pull (`corral.registry.pull.pull_model`, one per name at a time).
- A blob the store lacks joins, or starts, the one shared download of that digest
  (`corral.registry.download.shared_download`): concurrent requests and the background pull share
  one upstream transfer, and a broken transfer resumes from its partial file.
- Blobs stream while they download: each response sends bytes as they arrive but holds back its
  last byte until the whole blob has matched its digest. On a mismatch the connection is cut
  instead, so no client receives a complete response of unverified bytes, and the bad blob never
  enters the store (its partial file is deleted).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from corral.errors import BadRequestError, CorralError, NotFoundError
from corral.registry.client import MANIFEST_V2, RegistryOptions
from corral.registry.download import BlobDownload, active_download
from corral.registry.mirror import PullThrough
from corral.server.context import AppContext, Ctx
from corral.store.blobs import normalize_digest

log = logging.getLogger(__name__)
router = APIRouter()
CHUNK = 1 << 20
_RANGE = re.compile(r"\s*bytes=(\d*)-(\d*)\s*")


def _oci_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def _pull_through(ctx: AppContext) -> PullThrough:
    assert ctx.pull_through is not None  # the routes are mounted only when mirroring
    return ctx.pull_through


@router.api_route("/v2/{ns}/{model}/manifests/{tag}", methods=["GET", "HEAD"])
async def mirror_manifest(ns: str, model: str, tag: str, request: Request, ctx: Ctx) -> Response:
    pt = _pull_through(ctx)
    name = pt.name(ns, model, tag)
    if name is None:
        return _oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
    try:
        raw, stored = await run_in_threadpool(pt.manifest, name)
    except NotFoundError:
        return _oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
    except CorralError as e:
        return _oci_error(e.status if e.status >= 500 else 502, "UNAVAILABLE", e.message)
    if not stored and request.method == "GET":
        pt.fill(name, raw)
    headers = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(raw).hexdigest()}
    resp = Response(b"" if request.method == "HEAD" else raw, media_type=MANIFEST_V2, headers=headers)
    resp.headers["Content-Length"] = str(len(raw))
    return resp


@router.api_route("/v2/{ns}/{model}/blobs/{digest}", methods=["GET", "HEAD"])
async def mirror_blob(ns: str, model: str, digest: str, request: Request, ctx: Ctx) -> Response:
    pt = _pull_through(ctx)
    try:
        digest = normalize_digest(digest)
    except BadRequestError:
        return _oci_error(400, "DIGEST_INVALID", "invalid digest format")
    path = ctx.store.blobs.path(digest)
    name = pt.name(ns, model)
    if path.is_file() or name is None:
        return _stored_blob(path, digest)
    dl = active_download(ctx.store.blobs, digest)
    try:
        size = dl.total if dl is not None else await run_in_threadpool(pt.blob_size, name, digest)
    except CorralError as e:
        return _oci_error(e.status, "UNAVAILABLE", e.message)
    if size is None:
        return _oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
    if path.is_file():  # finished meanwhile
        return _stored_blob(path, digest)
    span = parse_range(request.headers.get("range"), size)
    if span is None:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end, partial = span
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    status = 206 if partial else 200
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    dl = dl or pt.download(name, digest, size)
    body = stream_download(dl, path, start, end)
    return StreamingResponse(body, status_code=status, headers=headers, media_type="application/octet-stream")


def _stored_blob(path: Path, digest: str) -> Response:
    if not path.is_file():
        return _oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
    return FileResponse(path, media_type="application/octet-stream", headers={"Docker-Content-Digest": digest})


def parse_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(first, last byte, whether partial) for one `bytes=` range; None when it is unsatisfiable.

    A header that is not a single byte range is ignored (the whole blob), as RFC 9110 allows.
    """
    m = _RANGE.fullmatch(header or "")
    if m is None or not (m[1] or m[2]):
        return 0, size - 1, False
    if not m[1]:
        suffix = int(m[2])
        if suffix == 0 or size == 0:
            return None
        return max(0, size - suffix), size - 1, True
    start = int(m[1])
    end = min(int(m[2]), size - 1) if m[2] else size - 1
    if start >= size or start > end:
        return None
    return start, end, True


async def stream_download(dl: BlobDownload, final: Path, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes `start..end` of `dl`'s blob as they arrive; byte `end` only once the blob is verified.

    Raises (cutting the response short) if the download fails or its digest does not match.
    """
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def poke() -> None:
        loop.call_soon_threadsafe(wake.set)

    dl.subscribe(poke)
    fd = -1
    try:
        pos = start
        while True:
            wake.clear()  # any progress from here on sets it again: no lost wake-ups
            verified = _verified(dl)
            if pos > end and verified:
                return
            if fd < 0:
                fd = _open(dl, final, verified)
            limit = pos if fd < 0 else end + 1 if verified else min(end, dl.readable_end(pos))
            if limit <= pos:
                await wake.wait()
                continue
            data = await asyncio.to_thread(os.pread, fd, min(CHUNK, limit - pos), pos)
            if not data:
                raise CorralError(f"mirror: {dl.digest[:19]} is shorter than announced")
            pos += len(data)
            yield data
    finally:
        dl.unsubscribe(poke)
        if fd >= 0:
            os.close(fd)


def _verified(dl: BlobDownload) -> bool:
    """True once the blob is complete and matched its digest; raises if the download failed."""
    if not dl.done.is_set():
        return False
    if dl.error is not None:
        log.warning("mirror: not serving %s: %s", dl.digest[:19], dl.error)
        raise CorralError(f"mirror: fetching {dl.digest[:19]} from upstream failed: {dl.error}")
    return True


def _open(dl: BlobDownload, final: Path, verified: bool) -> int:
    """A read descriptor on the blob (verified) or its partial file once planned; -1: not yet."""
    if verified:
        return os.open(final, os.O_RDONLY)
    if not dl.parts:
        return -1
    try:
        return os.open(dl.partial, os.O_RDONLY)
    except FileNotFoundError:  # renamed into place or discarded just now: the next round knows
        return -1


def install_mirror(app: FastAPI, ctx: AppContext, options: Callable[[bool], RegistryOptions]) -> None:
    """With `registry_mirror_of` set, mount the pull-through routes (call before the /v2 router)."""
    upstream = ctx.settings.registry_mirror_of
    if not upstream:
        return
    ctx.pull_through = PullThrough(ctx.store, upstream, options)
    app.include_router(router)
    log.info("pull-through mirror of %s", upstream)
