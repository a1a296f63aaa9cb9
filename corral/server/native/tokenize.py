"""`POST /api/tokenize` and `POST /api/detokenize`, with llama-server's shapes (corral extensions).

    /api/tokenize    {"model", "content" (or "prompt"), "add_special"?: false, "parse_special"?: true,
                      "with_pieces"?: false}
                     -> {"tokens": [int, ...]}, or with pieces {"tokens": [{"id", "piece"}, ...]}
                        (a piece is the token's text, or its bytes when they are not valid UTF-8)
    /api/detokenize  {"model", "tokens": [int, ...]} -> {"content": str}

The model is loaded like for any inference request (same options and keep_alive rules). Token
ids outside the model's vocabulary are a 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.errors import BadRequestError
from corral.schemas.native import DetokenizeRequest, TokenizeRequest
from corral.server.context import AppContext, Ctx
from corral.server.runtime import leased, resolve_job
from corral.server.stream import until_disconnected

router = APIRouter()


def tokenize_text(req: TokenizeRequest) -> str:
    if req.content is not None and req.prompt is not None:
        raise BadRequestError("use one of 'content' and 'prompt', not both")
    text = req.content if req.content is not None else req.prompt
    if text is None:
        raise BadRequestError("'content' is required")
    if not isinstance(text, str):
        raise BadRequestError("'content' must be a string")
    return text


def piece_value(piece: bytes) -> str | list[int]:
    """llama-server's piece: the text when it is valid UTF-8, else the byte values."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


@router.post("/api/tokenize")
async def tokenize(req: TokenizeRequest, ctx: Ctx, request: Request) -> JSONResponse:
    return JSONResponse(await until_disconnected(request, _tokenize(ctx, req)))


async def _tokenize(ctx: AppContext, req: TokenizeRequest) -> dict[str, Any]:
    text = tokenize_text(req)
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    async with leased(ctx, job) as (runner, _load_ns):
        tokens = await runner.tokenize(text, add_special=req.add_special, parse_special=req.parse_special)
        if not req.with_pieces:
            return {"tokens": tokens}
        pieces = await runner.pieces(tokens)
    return {"tokens": [{"id": t, "piece": piece_value(p)} for t, p in zip(tokens, pieces, strict=True)]}


@router.post("/api/detokenize")
async def detokenize(req: DetokenizeRequest, ctx: Ctx, request: Request) -> JSONResponse:
    return JSONResponse(await until_disconnected(request, _detokenize(ctx, req)))


async def _detokenize(ctx: AppContext, req: DetokenizeRequest) -> dict[str, Any]:
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    async with leased(ctx, job) as (runner, _load_ns):
        content = await runner.detokenize(req.tokens) if req.tokens else ""
    return {"content": content}
