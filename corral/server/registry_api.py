"""corral as an OCI registry for its own store, plus the `/api/pull` registry hook and `/api/push`.

Owns the `/v2/` routes (spec §7 seen from the server side): `GET /v2/`, manifests (GET/HEAD,
bytes exactly as stored, `Docker-Content-Digest`), blobs (GET/HEAD with Range), and push
acceptance (POST uploads with cross-repository mount, PATCH chunks, PUT with digest, manifest
PUT). Repository paths are `<ns>/<model>`: the default host is looked up first, then a unique
model of that namespace/name under any host. Transfer logic lives in `corral.registry`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from corral.errors import BadRequestError, CorralError
from corral.names import DEFAULT_HOST, ModelName
from corral.registry.auth import KeyPair, load_keypair
from corral.registry.client import MANIFEST_V2, RegistryOptions
from corral.registry.hf import DEFAULT_ENDPOINT, is_hf_name, pull_hf
from corral.registry.pull import pull_model
from corral.registry.push import push_model
from corral.schemas.native import ProgressResponse, PushRequest
from corral.server.context import AppContext, get_ctx
from corral.server.stream import iterate_in_thread, respond
from corral.store.blobs import BlobWriter, normalize_digest

router = APIRouter()
Ctx = Annotated[AppContext, Depends(get_ctx)]
_UPLOADS = "registry_uploads"


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


def _uploads(ctx: AppContext) -> dict[str, BlobWriter]:
    uploads: dict[str, BlobWriter] = ctx.extras.setdefault(_UPLOADS, {})
    return uploads


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
    upload_id = secrets.token_hex(16)
    _uploads(ctx)[upload_id] = await run_in_threadpool(ctx.store.blobs.writer)
    loc = f"/v2/{ns}/{model}/blobs/uploads/{upload_id}"
    headers = {"Location": loc, "Range": "0-0", "Docker-Upload-UUID": upload_id}
    return Response(status_code=202, headers=headers)


@router.patch("/v2/{ns}/{model}/blobs/uploads/{upload_id}")
async def patch_upload(
    ns: str, model: str, upload_id: str, request: Request, ctx: Ctx
) -> Response:
    writer = _uploads(ctx).get(upload_id)
    if writer is None:
        return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
    crange = request.headers.get("Content-Range")
    if crange and int(crange.split("-")[0]) != writer.size:
        return _oci_error(416, "BLOB_UPLOAD_INVALID", f"expected offset {writer.size}")
    async for chunk in request.stream():
        await asyncio.to_thread(writer.write, chunk)
    loc = f"/v2/{ns}/{model}/blobs/uploads/{upload_id}"
    return Response(status_code=202, headers={"Location": loc, "Range": f"0-{max(writer.size - 1, 0)}"})


@router.put("/v2/{ns}/{model}/blobs/uploads/{upload_id}")
async def finish_upload(
    ns: str, model: str, upload_id: str, request: Request, ctx: Ctx
) -> Response:
    writer = _uploads(ctx).pop(upload_id, None)
    if writer is None:
        return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
    try:
        expected = normalize_digest(request.query_params.get("digest", ""))
        async for chunk in request.stream():
            await asyncio.to_thread(writer.write, chunk)
        digest, _ = await asyncio.to_thread(writer.commit)
    except CorralError as e:
        return _oci_error(400, "DIGEST_INVALID", e.message)
    finally:
        writer.abort()
    if digest != expected:
        return _oci_error(400, "DIGEST_INVALID", f"digest mismatch, expected {expected}, got {digest}")
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
        return _oci_error(400, "MANIFEST_INVALID", e.message)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Response(status_code=201, headers={"Docker-Content-Digest": digest})


# The client side: /api/pull hook and /api/push ---------------------------------------------
def registry_options(ctx: AppContext, *, insecure: bool) -> RegistryOptions:
    keypair: KeyPair | None = ctx.extras.get("registry_keypair")
    if keypair is None:
        try:
            keypair = load_keypair(ctx.settings.home)
        except CorralError:
            keypair = None
    return RegistryOptions(insecure=insecure, keypair=keypair)


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
            endpoint: str = ctx.extras.get("hf_endpoint") or DEFAULT_ENDPOINT
            return iterate_in_thread(pull_hf(ctx.store, name, endpoint=endpoint))
        opts = registry_options(ctx, insecure=insecure)
        return iterate_in_thread(pull_model(ctx.store, name, opts))

    ctx.extras["registry_pull"] = registry_pull
    app.include_router(router)


__all__: list[Any] = ["install_registry", "router"]
