"""Model-management routes: tags, show, create, copy, delete, blobs, pull of bundled models.

Handlers stay thin: validate the request, call the store (in a worker thread, since it does
blocking file I/O), and shape the response. Errors are raised as `CorralError`s and written by
`corral.server.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from corral import __version__
from corral.errors import BadRequestError, ModelNotFoundError, NotFoundError
from corral.names import ModelName
from corral.schemas.native import (
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    ListResponse,
    ProgressResponse,
    PullRequest,
    ShowRequest,
    ShowResponse,
    VersionResponse,
)
from corral.server.context import AppContext, Ctx
from corral.server.native.modelinfo import list_entry, show_response
from corral.server.stream import iterate_in_thread, respond
from corral.store.blobs import normalize_digest
from corral.store.bundled import find_bundled, import_bundled
from corral.store.create import create_model

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(ctx: Ctx) -> JSONResponse:
    entries = await run_in_threadpool(ctx.store.list_models)
    return JSONResponse(ListResponse(models=[list_entry(ctx, e) for e in entries]).dump())


def parse_name(text: str | None, *, required: str = "model is required") -> ModelName:
    if not text:
        raise BadRequestError(required)
    return ModelName.parse(text)


@router.post("/api/show", response_model_exclude_none=True)
async def show(req: ShowRequest, ctx: Ctx) -> ShowResponse:
    text = req.model or req.name
    name = parse_name(text)

    def work() -> ShowResponse:
        resolved = ctx.store.resolve(name)
        model = ctx.store.load_model(resolved)
        return show_response(ctx, model, verbose=req.verbose, system=req.system)

    try:
        return await run_in_threadpool(work)
    except ModelNotFoundError:
        raise ModelNotFoundError(text or "", f"model '{text}' not found") from None


@router.post("/api/create")
async def create(req: CreateRequest, ctx: Ctx) -> Response:
    name = parse_name(req.model or req.name)
    if not req.from_ and not req.files:
        raise BadRequestError("neither 'from' or 'files' was specified")
    return await respond(iterate_in_thread(create_model(ctx.store, name, req)), req.stream)


@router.post("/api/copy")
async def copy(req: CopyRequest, ctx: Ctx) -> Response:
    src = ModelName.try_parse(req.source)
    if src is None:
        raise BadRequestError(f'source "{req.source}" is invalid')
    dst = ModelName.try_parse(req.destination)
    if dst is None:
        raise BadRequestError(f'destination "{req.destination}" is invalid')
    try:
        await run_in_threadpool(ctx.store.copy, src, dst)
    except ModelNotFoundError:
        raise ModelNotFoundError(req.source, f'model "{req.source}" not found') from None
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(req: DeleteRequest, ctx: Ctx) -> Response:
    text = req.model or req.name
    name = parse_name(text)
    try:
        await run_in_threadpool(ctx.store.delete, name)
    except ModelNotFoundError:
        raise ModelNotFoundError(text or "", f"model '{text}' not found") from None
    return Response(status_code=200)


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, ctx: Ctx) -> Response:
    if not ctx.store.blobs.exists(normalize_digest(digest)):
        raise NotFoundError(f'blob "{digest}" not found')
    return Response(status_code=200)


@router.post("/api/blobs/{digest}", status_code=201)
async def blob_upload(digest: str, request: Request, ctx: Ctx) -> Response:
    expected = normalize_digest(digest)
    if ctx.store.blobs.exists(expected):
        return Response(status_code=200)
    writer = ctx.store.blobs.writer(expected)
    try:
        async for chunk in request.stream():
            await asyncio.to_thread(writer.write, chunk)
        await asyncio.to_thread(writer.commit)
    finally:
        writer.abort()
    return Response(status_code=201)


@router.post("/api/pull")
async def pull(req: PullRequest, ctx: Ctx) -> Response:
    name = parse_name(req.model or req.name)
    return await respond(pull_stream(ctx, name, insecure=req.insecure), req.stream)


def pull_stream(ctx: AppContext, name: ModelName, *, insecure: bool) -> AsyncIterator[ProgressResponse]:
    """Bundled models import offline; other names go to the registry client when configured."""
    bundled = find_bundled(name)
    if bundled is not None:
        return iterate_in_thread(import_bundled(ctx.store, name))
    registry_pull = ctx.registry_pull
    if registry_pull is not None:
        stream: AsyncIterator[ProgressResponse] = registry_pull(name, insecure=insecure)
        return stream
    return iterate_in_thread(_not_found(name))


def _not_found(name: ModelName) -> Iterator[ProgressResponse]:
    yield ProgressResponse(status="pulling manifest")
    raise ModelNotFoundError(str(name), "pull model manifest: file does not exist")
