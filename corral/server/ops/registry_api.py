"""corral as an OCI registry for its own store, plus the `/api/pull` registry hook and `/api/push`.

Owns the `/v2/` routes (spec §7 seen from the server side): `GET /v2/`, manifests (GET/HEAD,
bytes exactly as stored, `Docker-Content-Digest`), blobs (GET/HEAD with Range), and push
acceptance (POST uploads with cross-repository mount, PATCH chunks checked against
`Content-Range`, PUT with digest, GET status and DELETE of an upload, manifest PUT; the upload
sessions, their expiry and cap live in `corral.server.native.uploads`). Repository paths are
`<ns>/<model>`: the default host is looked up first, then a unique model of that namespace/name
under any host. Transfer logic lives in `corral.registry`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from corral.errors import BadRequestError, CorralError, DigestMismatchError, InsufficientStorageError
from corral.names import DEFAULT_HOST, ModelName
from corral.registry.auth import load_keypair
from corral.registry.client import MANIFEST_V2, RegistryOptions, mirrors_from
from corral.registry.hf import DEFAULT_ENDPOINT, is_hf_name, pull_hf
from corral.registry.pull import pull_model
from corral.registry.push import push_model
from corral.schemas.native import ProgressResponse, PushRequest
from corral.server.context import AppContext, get_ctx
from corral.server.native.uploads import TooManyUploadsError, UploadSession, UploadSessions, parse_content_range
from corral.server.ops.mirror import install_mirror
from corral.server.stream import iterate_in_thread, respond
from corral.store.blobs import BlobWriter, normalize_digest

router = APIRouter()
Ctx = Annotated[AppContext, Depends(get_ctx)]


def _oci_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def _lookup(ctx: AppContext, ns: str, model: str, tag: str) -> ModelName | None:
    name = ModelName.try_parse(f"{DEFAULT_HOST}/{ns}/{model}:{tag}")
    if name is None:
        return None
    if ctx.store.exists(name):
        return ctx.store.resolve(name)
    matches = [
        e.name for e in ctx.store.list_models()
        if (e.name.namespace.lower(), e.name.model.lower(), e.name.tag.lower())
        == (ns.lower(), model.lower(), tag.lower())
    ]
    return matches[0] if len(matches) == 1 else None


@router.get("/v2/")
async def v2_root() -> JSONResponse:
    return JSONResponse({})


@router.api_route("/v2/{ns}/{model}/manifests/{tag}", methods=["GET", "HEAD"])
async def get_manifest(
    ns: str, model: str, tag: str, request: Request, ctx: Ctx
) -> Response:
    name = await run_in_threadpool(_lookup, ctx, ns, model, tag)
    if name is None:
        return _oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
    _, data = await run_in_threadpool(ctx.store.read_manifest, name)
    headers = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest()}
    body = b"" if request.method == "HEAD" else data
    resp = Response(body, media_type=MANIFEST_V2, headers=headers)
    resp.headers["Content-Length"] = str(len(data))
    return resp


@router.api_route("/v2/{ns}/{model}/blobs/{digest}", methods=["GET", "HEAD"])
async def get_blob(ns: str, model: str, digest: str, ctx: Ctx) -> Response:
    try:
        digest = normalize_digest(digest)
    except BadRequestError:
        return _oci_error(400, "DIGEST_INVALID", "invalid digest format")
    path = ctx.store.blobs.path(digest)
    if not path.is_file():
        return _oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
    return FileResponse(
        path, media_type="application/octet-stream", headers={"Docker-Content-Digest": digest}
    )


def _uploads(ctx: AppContext) -> UploadSessions:
    assert ctx.uploads is not None  # set with the routes by install_registry
    return ctx.uploads


def _upload_error(e: CorralError) -> JSONResponse:
    code = {400: "BLOB_UPLOAD_INVALID", 416: "BLOB_UPLOAD_INVALID", 429: "TOOMANYREQUESTS"}
    resp = _oci_error(e.status, code.get(e.status, "BLOB_UPLOAD_INVALID"), e.message)
    if isinstance(e, TooManyUploadsError):
        resp.headers["Retry-After"] = "60"
    return resp


def _upload_headers(path: str, upload_id: str, writer: BlobWriter) -> dict[str, str]:
    return {"Location": path, "Range": f"0-{max(writer.size - 1, 0)}", "Docker-Upload-UUID": upload_id}


async def _append(request: Request, sessions: UploadSessions, session: UploadSession) -> None:
    """Append the body (one chunk, checked against `Content-Range`); a failure undoes it.

    A full disk ends the session (its temp file is already gone).
    """
    writer = session.writer
    crange = request.headers.get("Content-Range")
    span = parse_content_range(crange, writer.size) if crange else None
    point = writer.checkpoint()
    try:
        async for chunk in request.stream():
            await asyncio.to_thread(writer.write, chunk)
        if span is not None and writer.size != span[1] + 1:
            raise BadRequestError(
                f"Content-Range {crange} announces {span[1] - span[0] + 1} bytes,"
                f" the body had {writer.size - point[0]}"
            )
    except InsufficientStorageError:
        sessions.discard(session.id)
        raise
    except BaseException:
        await asyncio.to_thread(writer.rollback, point)
        raise
    finally:
        await asyncio.to_thread(writer.suspend)


@router.post("/v2/{ns}/{model}/blobs/uploads/")
async def start_upload(ns: str, model: str, request: Request, ctx: Ctx) -> Response:
    mount = request.query_params.get("mount")
    if mount:
        try:
            digest = normalize_digest(mount)
        except BadRequestError:
            return _oci_error(400, "DIGEST_INVALID", "invalid digest format")
        if ctx.store.blobs.exists(digest):
            loc = f"/v2/{ns}/{model}/blobs/{digest}"
            return Response(status_code=201, headers={"Location": loc, "Docker-Content-Digest": digest})
    try:
        session = _uploads(ctx).open()
    except CorralError as e:
        return _upload_error(e)
    loc = f"/v2/{ns}/{model}/blobs/uploads/{session.id}"
    return Response(status_code=202, headers=_upload_headers(loc, session.id, session.writer))


@router.get("/v2/{ns}/{model}/blobs/uploads/{upload_id}")
async def upload_status(ns: str, model: str, upload_id: str, ctx: Ctx) -> Response:
    try:
        with _uploads(ctx).use(upload_id) as session:
            if session is None:
                return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
            loc = f"/v2/{ns}/{model}/blobs/uploads/{upload_id}"
            return Response(status_code=204, headers=_upload_headers(loc, upload_id, session.writer))
    except CorralError as e:
        return _upload_error(e)


@router.delete("/v2/{ns}/{model}/blobs/uploads/{upload_id}")
async def cancel_upload(ns: str, model: str, upload_id: str, ctx: Ctx) -> Response:
    if not _uploads(ctx).discard(upload_id):
        return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
    return Response(status_code=204)


@router.patch("/v2/{ns}/{model}/blobs/uploads/{upload_id}")
async def patch_upload(
    ns: str, model: str, upload_id: str, request: Request, ctx: Ctx
) -> Response:
    sessions = _uploads(ctx)
    try:
        with sessions.use(upload_id) as session:
            if session is None:
                return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
            await _append(request, sessions, session)
            loc = f"/v2/{ns}/{model}/blobs/uploads/{upload_id}"
            return Response(status_code=202, headers=_upload_headers(loc, upload_id, session.writer))
    except CorralError as e:
        return _upload_error(e)


@router.put("/v2/{ns}/{model}/blobs/uploads/{upload_id}")
async def finish_upload(
    ns: str, model: str, upload_id: str, request: Request, ctx: Ctx
) -> Response:
    try:
        expected = normalize_digest(request.query_params.get("digest", ""))
    except BadRequestError:
        return _oci_error(400, "DIGEST_INVALID", "invalid digest format")
    sessions = _uploads(ctx)
    try:
        with sessions.use(upload_id) as session:
            if session is None:
                return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
            await _append(request, sessions, session)
            sessions.detach(session)
            try:
                digest, _ = await asyncio.to_thread(session.writer.commit, expected)
            finally:
                session.writer.abort()
    except DigestMismatchError as e:
        return _oci_error(400, "DIGEST_INVALID", e.message)
    except CorralError as e:
        return _upload_error(e)
    loc = f"/v2/{ns}/{model}/blobs/{digest}"
    return Response(status_code=201, headers={"Location": loc, "Docker-Content-Digest": digest})


@router.put("/v2/{ns}/{model}/manifests/{tag}")
async def put_manifest(
    ns: str, model: str, tag: str, request: Request, ctx: Ctx
) -> Response:
    name = ModelName.try_parse(f"{DEFAULT_HOST}/{ns}/{model}:{tag}")
    if name is None:
        return _oci_error(400, "NAME_INVALID", "invalid repository name")
    data = await request.body()
    try:
        await run_in_threadpool(ctx.store.write_manifest, name, data)
    except CorralError as e:
        return _oci_error(e.status if e.status >= 500 else 400, "MANIFEST_INVALID", e.message)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Response(status_code=201, headers={"Docker-Content-Digest": digest})


# The client side: /api/pull hook and /api/push ---------------------------------------------
def registry_options(ctx: AppContext, *, insecure: bool) -> RegistryOptions:
    keypair = ctx.services.registry_keypair
    if keypair is None:
        try:
            keypair = load_keypair(ctx.settings.home)
        except CorralError:
            keypair = None
    mirrors = mirrors_from(ctx.settings.registry_mirrors, ctx.settings.registry_mirror_key)
    return RegistryOptions(insecure=insecure, keypair=keypair, mirrors=mirrors)


@router.post("/api/push")
async def push(req: PushRequest, ctx: Ctx) -> Response:
    text = req.model or req.name
    if not text:
        raise BadRequestError("model is required")
    name = await run_in_threadpool(ctx.store.resolve, ModelName.parse(text))
    opts = registry_options(ctx, insecure=req.insecure)
    return await respond(iterate_in_thread(push_model(ctx.store, name, opts)), req.stream)


def install_registry(app: FastAPI, ctx: AppContext) -> None:
    """Mount the `/v2/` and `/api/push` routes and set the `/api/pull` registry hook."""

    def registry_pull(name: ModelName, *, insecure: bool) -> AsyncIterator[ProgressResponse]:
        if is_hf_name(name):
            endpoint = ctx.services.hf_endpoint or DEFAULT_ENDPOINT
            return iterate_in_thread(pull_hf(ctx.store, name, endpoint=endpoint))
        opts = registry_options(ctx, insecure=insecure)
        return iterate_in_thread(pull_model(ctx.store, name, opts))

    ctx.registry_pull = registry_pull
    ctx.uploads = UploadSessions(ctx.store.blobs)
    ctx.uploads.clean_leftovers()
    install_mirror(app, ctx, lambda insecure: registry_options(ctx, insecure=insecure))  # routes first
    app.include_router(router)


__all__: list[Any] = ["install_registry", "router"]
