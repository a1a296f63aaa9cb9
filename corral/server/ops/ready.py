"""`GET /api/ready`: the readiness probe for load balancers and orchestrators.

Cheap (no store or engine I/O: it reads the scheduler's tables) and public, like `GET /`, because
a balancer's health check usually carries no key. Without a credential that grants `read` it
reveals only counts:

    {"status": "ok", "queue_depth": 0, "max_queue": 512, "loaded": 1, "active": 2}

With one (or when auth is not enabled: the loopback default) it adds each loaded model:
`"models": [{"name", "loaded", "queue_depth", "active"}]`; `?model=NAME` narrows that list to
one model (`loaded: false` when it is not loaded) and needs `read`. `active` counts requests
holding a parallel slot, a model's `queue_depth` those waiting for one of its slots, and the top
`queue_depth` every request waiting for a slot or a load (the bound `max_queue` applies to it).

The status is 503 (`"status": "shutting down"` or `"busy"`) while the server stops or when the
queue is full, so a balancer sends new requests elsewhere; otherwise 200.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.auth.scopes import allows
from corral.errors import BadRequestError, CorralError
from corral.names import ModelName
from corral.scheduler import LoadedRunner
from corral.server.context import AppContext, Ctx
from corral.server.ops.security import credential_of

router = APIRouter()


def model_state(entry: LoadedRunner) -> dict[str, Any]:
    """A loaded model's counts: holders of a slot are `active`, the rest of its leases wait."""
    slots = entry.ref.spec.num_parallel
    active = min(entry.refcount, slots)
    return {"name": entry.ref.name, "loaded": entry.runner.alive and not entry.closing,
            "queue_depth": entry.refcount - active, "active": active}


def _may_read(request: Request, ctx: AppContext) -> bool:
    auth = ctx.services.auth
    try:
        principal = auth.authenticate(credential_of(request.scope))
    except CorralError:
        return False
    return allows(principal.scopes, "read")


def _require_read(request: Request, ctx: AppContext) -> None:
    """`?model=` names a model, so it needs `read`: the authenticator's own 401/403."""
    auth = ctx.services.auth
    auth.authorize(auth.authenticate(credential_of(request.scope)), "read")


def _select(models: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    name = ModelName.try_parse(wanted)
    if name is None:
        raise BadRequestError("invalid model name")
    for m in models:
        other = ModelName.try_parse(m["name"])
        if other is not None and other.matches(name):
            return [m]
    return [{"name": wanted, "loaded": False, "queue_depth": 0, "active": 0}]


@router.api_route("/api/ready", methods=["GET", "HEAD"])
async def ready(request: Request, ctx: Ctx, model: str | None = None) -> JSONResponse:
    if model is not None:
        _require_read(request, ctx)
    scheduler = ctx.scheduler
    entries = scheduler.snapshot() if scheduler is not None else []
    models = [model_state(e) for e in entries]
    pending = scheduler.pending if scheduler is not None else 0
    status = "ok"
    if scheduler is not None and scheduler.stopping:
        status = "shutting down"
    elif pending >= ctx.settings.max_queue:
        status = "busy"
    body: dict[str, Any] = {
        "status": status, "queue_depth": pending, "max_queue": ctx.settings.max_queue,
        "loaded": sum(1 for m in models if m["loaded"]), "active": sum(m["active"] for m in models),
    }
    if model is not None:
        body["models"] = _select(models, model)
    elif _may_read(request, ctx):
        body["models"] = models
    return JSONResponse(body, status_code=200 if status == "ok" else 503)
