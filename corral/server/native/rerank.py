"""`POST /api/rerank` and `POST /v1/rerank`: llama-server's reranking (the Jina / Cohere shape).

    {"model", "query", "documents": [str | {"text": str}, ...], "top_n"?, "return_documents"?: false}
    -> {"model", "object": "list", "usage": {"prompt_tokens", "total_tokens"},
        "results": [{"index", "relevance_score", "document"?: {"text"}}, ...]}

Results are sorted by relevance_score, highest first, and cut to `top_n` (default: all). The score
is the model's raw classification output for the (query, document) pair, as llama-server returns
it. Only rank-pooling models (GGUF `<arch>.pooling_type` = 4, a reranker's `cls.*` head) rerank;
any other model is a 400 that says so, before it is loaded.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.errors import BadRequestError
from corral.schemas.native import RerankRequest
from corral.server.context import AppContext, Ctx
from corral.server.runtime import Job, leased, resolve_job
from corral.server.stream import until_disconnected

router = APIRouter()
POOLING_RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK


def documents_of(req: RerankRequest) -> list[str]:
    raw = req.documents if req.documents is not None else req.texts
    if not isinstance(raw, list) or not raw:
        raise BadRequestError('"documents" must be a non-empty array of strings')
    out: list[str] = []
    for doc in raw:
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            doc = doc["text"]
        if not isinstance(doc, str):
            raise BadRequestError('each of "documents" must be a string (or an object with a "text" string)')
        out.append(doc)
    return out


def check_request(req: RerankRequest) -> tuple[str, list[str], int]:
    """(query, documents, top_n) of a valid request, else a 400."""
    if not isinstance(req.query, str) or not req.query:
        raise BadRequestError('"query" must be a non-empty string')
    docs = documents_of(req)
    top_n = len(docs) if req.top_n is None else req.top_n
    if top_n < 1:
        raise BadRequestError('"top_n" must be at least 1')
    return req.query, docs, top_n


def is_reranker(job: Job) -> bool:
    info = job.info
    if info is None:
        return False
    value = info.kv.get(f"{info.architecture}.pooling_type")
    return isinstance(value, int) and not isinstance(value, bool) and value == POOLING_RANK


def ranked(scores: list[float], docs: list[str], top_n: int, with_docs: bool) -> list[dict[str, Any]]:
    """Results sorted by score (highest first; ties keep document order), cut to top_n."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]
    out: list[dict[str, Any]] = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if with_docs:
            item["document"] = {"text": docs[i]}
        out.append(item)
    return out


@router.post("/api/rerank")
async def rerank(req: RerankRequest, ctx: Ctx, request: Request) -> JSONResponse:
    return JSONResponse(await until_disconnected(request, rerank_response(ctx, req)))


@router.post("/v1/rerank")
async def rerank_v1(req: RerankRequest, ctx: Ctx, request: Request) -> JSONResponse:
    return JSONResponse(await until_disconnected(request, rerank_response(ctx, req)))


async def rerank_response(ctx: AppContext, req: RerankRequest) -> dict[str, Any]:
    query, docs, top_n = check_request(req)
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    if not is_reranker(job):
        raise BadRequestError(f'"{req.model}" does not support reranking: it is not a rank-pooling (reranker) model')
    async with leased(ctx, job) as (runner, _load_ns):
        result = await runner.rerank(query, docs)
    tokens = result.prompt_eval_count
    return {
        "model": req.model,
        "object": "list",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": ranked(result.scores, docs, top_n, req.return_documents),
    }
