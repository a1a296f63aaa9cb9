"""The loaded-model list (/api/ps): what each runner holds, where (CPU, GPU, RPC workers), until when.

A model kept forever (`keep_alive` < 0) reports an expiry far in the future, as Ollama does.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from corral.schemas.native import ModelDetails, ProcessModel, ProcessResponse
from corral.server.context import Ctx
from corral.server.runtime import scheduler_of

router = APIRouter()
FOREVER_YEARS = 300


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
