"""Embedding routes (/api/embed, /api/embeddings) and the loaded-model list (/api/ps).

`/api/embed` L2-normalises every vector (then truncates to `dimensions` and re-normalises);
`/api/embeddings` is the legacy raw form (spec §1).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.errors import BadRequestError, CorralError
from corral.schemas.native import (
    EmbeddingResponse,
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResponse,
    ModelDetails,
    ProcessModel,
    ProcessResponse,
)
from corral.server.context import AppContext, Ctx
from corral.server.runtime import leased, resolve_job, scheduler_of
from corral.server.stream import until_disconnected

router = APIRouter()
FOREVER_YEARS = 300


def normalize(vec: list[float]) -> list[float]:
    if any(math.isnan(v) or math.isinf(v) for v in vec):
        raise CorralError("embedding contains NaN or Inf values")
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm > 0 else list(vec)


def embed_inputs(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequestError("invalid input type")


@router.post("/api/embed")
async def embed(req: EmbedRequest, ctx: Ctx, request: Request) -> JSONResponse:
    return JSONResponse((await until_disconnected(request, embed_response(ctx, req))).dump())


async def embed_response(ctx: AppContext, req: EmbedRequest) -> EmbedResponse:
    """The /api/embed body for a request; the OpenAI layer calls this too."""
    inputs = embed_inputs(req.input)
    if req.dimensions is not None and req.dimensions <= 0:
        raise BadRequestError("dimensions must be greater than 0")
    started = time.monotonic_ns()
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    async with leased(ctx, job) as (runner, load_ns):
        if not inputs:
            return EmbedResponse(model=req.model)
        result = await runner.embed(inputs, truncate=req.truncate is not False)
    vectors = [normalize(v) for v in result.embeddings]
    if req.dimensions is not None:
        vectors = [normalize(v[: req.dimensions]) for v in vectors]
    return EmbedResponse(model=req.model, embeddings=vectors, total_duration=time.monotonic_ns() - started,
                         load_duration=load_ns, prompt_eval_count=result.prompt_eval_count)


@router.post("/api/embeddings")
async def embeddings(req: EmbeddingsRequest, ctx: Ctx, request: Request) -> JSONResponse:
    return JSONResponse((await until_disconnected(request, legacy_embedding(ctx, req))).dump())


async def legacy_embedding(ctx: AppContext, req: EmbeddingsRequest) -> EmbeddingResponse:
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    async with leased(ctx, job) as (runner, _load_ns):
        if not req.prompt:
            return EmbeddingResponse()
        result = await runner.embed([req.prompt], truncate=True)
    return EmbeddingResponse(embedding=result.embeddings[0])


@router.get("/api/ps")
async def ps(ctx: Ctx) -> JSONResponse:
    sched = scheduler_of(ctx)
    now_mono = sched.clock()
    now = datetime.now(UTC)
    models: list[ProcessModel] = []
    for entry in sched.snapshot():
        if entry.refcount > 0 or math.isinf(entry.expires_at):
            remaining = entry.keep_alive
        else:
            remaining = entry.expires_at - now_mono
        if math.isinf(remaining):
            expires = now + timedelta(days=365 * FOREVER_YEARS)
        else:
            expires = now + timedelta(seconds=max(remaining, 0))
        ref = entry.ref
        models.append(ProcessModel(
            name=ref.name,
            model=ref.name,
            size=entry.runner.memory_bytes or entry.estimate,
            digest=ref.digest,
            details=ModelDetails.model_validate(ref.details),
            expires_at=expires,
            size_vram=int(getattr(entry.runner, "vram_bytes", 0)),
            context_length=ref.spec.options.num_ctx,
            rpc=rpc_offload(entry.runner),
        ))
    return JSONResponse(ProcessResponse(models=models).dump())


def rpc_offload(runner: object) -> dict[str, Any] | None:
    """What a runner put on RPC workers, as its ready line reported it (None: nothing)."""
    info = getattr(runner, "info", None)
    rpc = info.get("rpc") if isinstance(info, dict) else None
    return rpc if isinstance(rpc, dict) and rpc.get("workers") else None
