"""Admin routes for API keys: `GET /api/keys`, `POST /api/keys`, `DELETE /api/keys/{id}`.

The same operations as `corral keys`, over HTTP, for an admin-scoped caller (the scope check is the
security middleware's; `/api/keys*` is classified `admin`). The plain key is in the POST response
only. Storage is `corral.auth.keys.KeyStore`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from corral.auth.keys import KeyStore
from corral.server.context import AppContext, get_ctx

router = APIRouter()
Ctx = Annotated[AppContext, Depends(get_ctx)]


class CreateKeyRequest(BaseModel):
    scopes: list[str] = Field(min_length=1, max_length=4)
    name: str = Field("", max_length=100)


def key_store(ctx: AppContext) -> KeyStore:
    return ctx.services.keys


@router.get("/api/keys")
async def list_keys(ctx: Ctx) -> dict[str, Any]:
    records = await run_in_threadpool(key_store(ctx).records)
    return {"keys": [r.public() for r in records]}


@router.post("/api/keys", status_code=201)
async def create_key(req: CreateKeyRequest, ctx: Ctx) -> dict[str, Any]:
    record, plain = await run_in_threadpool(key_store(ctx).create, req.scopes, req.name)
    return {**record.public(), "key": plain}


@router.delete("/api/keys/{key_id}")
async def revoke_key(key_id: str, ctx: Ctx) -> dict[str, Any]:
    record = await run_in_threadpool(key_store(ctx).revoke, key_id)
    return record.public()
