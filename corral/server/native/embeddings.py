"""Embedding routes (/api/embed, /api/embeddings).

`/api/embed` L2-normalises every vector (then truncates to `dimensions` and re-normalises);
`/api/embeddings` is the legacy raw form (spec §1).
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.errors import BadRequestError, CorralError
from corral.schemas.native import (
    EmbeddingResponse,
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResponse,
)
from corral.server.context import AppContext, Ctx
from corral.server.runtime import leased, resolve_job
from corral.server.stream import until_disconnected

router = APIRouter()


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
