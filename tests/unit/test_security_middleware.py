"""The security middleware in-process: auth per scope × route class, formats, host check, CORS, body cap,
request ids, rate limits, audit lines and /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from corral.auth.authenticator import Authenticator
from corral.auth.keys import KeyStore
from corral.auth.scopes import SCOPES, allows
from corral.config import Settings
from corral.server.app import create_app
from corral.server.context import Services
from corral.server.ops.limits import RateLimiter
from corral.server.ops.metrics import ServerMetrics
from corral.store.store import Store
from tests.appenv import client, make_app

pytestmark = pytest.mark.anyio
JWT_SECRET = "jwt-secret-jwt-secret-jwt-secret-123"

# One representative request per route class (a model that does not exist: passing auth gives 404/400).
ROUTES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "read": ("GET", "/api/tags", None),
    "infer": ("POST", "/api/generate", {"model": "nope", "prompt": "hi"}),
    "manage": ("POST", "/api/copy", {"source": "nope", "destination": "other"}),
    "admin": ("GET", "/metrics", None),
}


async def call(app: FastAPI, route_class: str, **headers: str) -> httpx.Response:
    method, path, body = ROUTES[route_class]
    async with client(app, **headers) as c:
        return await c.request(method, path, json=body)


def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "home" / "keys.json")


async def test_open_until_a_key_exists_then_everything_but_root_needs_one(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    assert (await call(app, "read")).status_code == 200
    keys(tmp_path).create("read")
    assert (await call(app, "read")).status_code == 401
    async with client(app) as c:
        assert (await c.get("/")).status_code == 200
        assert (await c.head("/")).status_code == 200


@pytest.mark.parametrize("granted", [*SCOPES, "infer,read"])
@pytest.mark.parametrize("route_class", list(ROUTES))
async def test_scope_matrix(tmp_path: Path, granted: str, route_class: str) -> None:
    app = make_app(tmp_path)
    record, plain = keys(tmp_path).create(granted)
    response = await call(app, route_class, authorization=f"Bearer {plain}")
    if allows(frozenset(record.scopes), route_class):
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403
        assert f"'{route_class}' scope" in response.json()["error"]


async def test_x_api_key_header_and_bad_credentials(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    _, plain = keys(tmp_path).create("read")
    assert (await call(app, "read", **{"x-api-key": plain})).status_code == 200
    for bad in ("Bearer crl_abc_def", "Bearer " + plain + "x", "Basic " + plain, "Bearer"):
        response = await call(app, "read", authorization=bad)
        assert response.status_code == 401, bad
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"].startswith("unauthorized")


async def test_compat_routes_get_their_own_error_shapes(tmp_path: Path) -> None:
    app = make_app(tmp_path)  # the error handlers choose the OpenAI (/v1/) and Anthropic (/v1/messages) formats
    _, plain = keys(tmp_path).create("read")
    async with client(app) as c:
        openai_401 = await c.post("/v1/chat/completions", json={})
        anthropic_401 = await c.post("/v1/messages", json={})
        openai_403 = await c.post("/v1/chat/completions", json={}, headers={"authorization": f"Bearer {plain}"})
    assert openai_401.status_code == 401 and "API key" in openai_401.json()["error"]["message"]
    assert anthropic_401.status_code == 401 and anthropic_401.json()["type"] == "error"
    assert "API key" in anthropic_401.json()["error"]["message"]
    assert openai_403.status_code == 403 and "'infer' scope" in openai_403.json()["error"]["message"]


async def test_jwt_bearer(tmp_path: Path) -> None:
    app = make_app(tmp_path, jwt_secret=JWT_SECRET, jwt_audience="corral")
    now = int(time.time())
    good = jwt.encode({"sub": "ci", "aud": "corral", "exp": now + 60, "scope": "read"}, JWT_SECRET)
    expired = jwt.encode({"sub": "ci", "aud": "corral", "exp": now - 60, "scope": "read"}, JWT_SECRET)
    wrong_aud = jwt.encode({"sub": "ci", "aud": "x", "exp": now + 60, "scope": "read"}, JWT_SECRET)
    assert (await call(app, "read")).status_code == 401  # JWT configured: auth on, no keys needed
    assert (await call(app, "read", authorization=f"Bearer {good}")).status_code == 200
    assert (await call(app, "manage", authorization=f"Bearer {good}")).status_code == 403
    expired_response = await call(app, "read", authorization=f"Bearer {expired}")
    assert expired_response.status_code == 401 and "expired" in expired_response.json()["error"]
    assert (await call(app, "read", authorization=f"Bearer {wrong_aud}")).status_code == 401


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:11434", 200), ("localhost", 200), ("[::1]:11434", 200), ("192.168.1.5", 200),
     ("myhost.local", 200), ("api.internal", 200), ("evil.example.com", 403), ("8.8.8.8", 403)],
)
async def test_dns_rebinding_host_check_on_loopback(tmp_path: Path, host: str, status: int) -> None:
    app = make_app(tmp_path)
    async with client(app) as c:
        assert (await c.get("/api/version", headers={"host": host})).status_code == status


async def test_no_host_check_when_bound_publicly(tmp_path: Path) -> None:
    app = make_app(tmp_path, host="0.0.0.0:11434", allow_unauthenticated=True)
    async with client(app) as c:
        assert (await c.get("/api/version", headers={"host": "evil.example.com"})).status_code == 200


async def test_cors_defaults_extra_origins_and_preflight(tmp_path: Path) -> None:
    app = make_app(tmp_path, origins="chrome-extension://*")
    keys(tmp_path).create("read")
    async with client(app) as c:
        pre = await c.options("/api/chat", headers={
            "origin": "http://localhost:3000", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, x-stainless-os, x-evil"})
        assert pre.status_code == 204  # preflight needs no credential
        assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-stainless-os" in allowed and "x-evil" not in allowed
        ext = await c.get("/", headers={"origin": "chrome-extension://abc"})
        assert ext.headers["access-control-allow-origin"] == "chrome-extension://abc"
        bad = await c.get("/", headers={"origin": "https://evil.example.com"})
        assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers


async def test_json_body_cap_but_blob_uploads_exempt(tmp_path: Path) -> None:
    app = make_app(tmp_path, max_body=2048)
    async with client(app) as c:
        big = await c.post("/api/show", content=b'{"model": "' + b"x" * 4096 + b'"}')
        assert big.status_code == 413 and "too large" in big.json()["error"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
            for _ in range(4):
                yield b" " * 1024

        assert (await c.post("/api/show", content=chunked())).status_code == 413
        import hashlib

        data = b"z" * 10_000
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert (await c.post(f"/api/blobs/{digest}", content=data)).status_code == 201
        assert (await c.head(f"/api/blobs/{digest}")).status_code == 200


async def test_request_id_is_echoed_or_generated(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with client(app) as c:
        echoed = await c.get("/api/version", headers={"x-request-id": "abc-123"})
        made = await c.get("/api/version", headers={"x-request-id": "bad id\n with junk"})
        unauth = await c.get("/nope")
    assert echoed.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "bad id"
    assert unauth.headers["x-request-id"]


async def test_request_rate_limit_per_key(tmp_path: Path) -> None:
    app = make_app(tmp_path, rate_limit_rpm=3)
    _, a = keys(tmp_path).create("read")
    _, b = keys(tmp_path).create("read")
    statuses = [(await call(app, "read", authorization=f"Bearer {a}")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = await call(app, "read", authorization=f"Bearer {a}")
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert (await call(app, "read", authorization=f"Bearer {b}")).status_code == 200  # other key unaffected


async def test_token_rate_limit_uses_counted_tokens(tmp_path: Path) -> None:
    app = make_app(tmp_path, rate_limit_tpm=100)
    record, plain = keys(tmp_path).create("read")
    assert (await call(app, "read", authorization=f"Bearer {plain}")).status_code == 200
    app.state.ctx.services.limiter.count_tokens(record.id, 150)
    response = await call(app, "read", authorization=f"Bearer {plain}")
    assert response.status_code == 429 and "tokens per minute" in response.json()["error"]


async def test_audit_line_for_manage_actions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(tmp_path)
    record, plain = keys(tmp_path).create("manage")
    with caplog.at_level(logging.INFO, logger="corral.audit"):
        await call(app, "manage", authorization=f"Bearer {plain}")
        await call(app, "read", authorization=f"Bearer {plain}")
    audits = [r for r in caplog.records if r.name == "corral.audit"]
    assert len(audits) == 1
    assert audits[0].key_id == record.id and audits[0].path == "/api/copy"  # type: ignore[attr-defined]


def _sample(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def test_metrics_move_as_requests_run(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with client(app) as c:
        before = (await c.get("/metrics")).text
        for _ in range(3):
            await c.get("/api/tags")
        await c.post("/api/show", json={"model": "missing"})
        after = (await c.get("/metrics")).text
    tags = 'corral_http_requests_total{method="GET",route="/api/tags",status="200"}'
    assert _sample(after, tags) - _sample(before, tags) == 3
    assert _sample(after, 'corral_http_requests_total{method="POST",route="/api/show",status="404"}') == 1
    assert _sample(after, 'corral_http_request_duration_seconds_count{route="/api/tags"}') == 3


async def test_record_generation_feeds_metrics_and_token_limit(tmp_path: Path) -> None:
    from corral.engine.base import Metrics
    from corral.server.ops.metrics import current_key_id

    app = make_app(tmp_path, rate_limit_tpm=1000)
    ctx = app.state.ctx
    token = current_key_id.set("k1")
    try:
        m = Metrics(prompt_eval_count=10, prompt_cache_count=4, eval_count=20, eval_duration=2_000_000_000)
        ctx.record_generation("m:1", m, time.monotonic_ns() - 3_000_000_000, 500_000_000)
    finally:
        current_key_id.reset(token)
    text = ctx.services.metrics.render().decode()
    assert _sample(text, 'corral_prompt_tokens_total{model="m:1"}') == 6
    assert _sample(text, 'corral_prompt_cache_hit_tokens_total{model="m:1"}') == 4
    assert _sample(text, 'corral_generated_tokens_total{model="m:1"}') == 20
    assert _sample(text, 'corral_generation_tokens_per_second{model="m:1"}') == 10
    assert 0.9 <= _sample(text, 'corral_time_to_first_token_seconds_sum{model="m:1"}') < 2
    assert _sample(text, 'corral_model_load_duration_seconds_count{model="m:1"}') == 1
    assert ctx.services.limiter.usage("k1") == (0, 30)


async def test_slow_reader_is_dropped_by_idle_timeout(tmp_path: Path) -> None:
    """A send that never completes (client not reading) is abandoned after stream_idle_timeout."""
    app = make_app(tmp_path, stream_idle_timeout="1")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def stuck_send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await asyncio.sleep(3600)

    scope = {"type": "http", "method": "GET", "path": "/api/version", "headers": [(b"host", b"127.0.0.1")],
             "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 11434),
             "scheme": "http", "root_path": "", "asgi": {"version": "3.0", "spec_version": "2.4"}}
    started = time.monotonic()
    await asyncio.wait_for(app(scope, receive, stuck_send), timeout=10)
    assert 0.9 <= time.monotonic() - started < 5
    assert sent[0]["status"] == 200


async def test_key_admin_routes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(tmp_path)
    admin, admin_key = keys(tmp_path).create("admin", name="root")
    _, read_key = keys(tmp_path).create("read")
    async with client(app, authorization=f"Bearer {admin_key}") as c:
        with caplog.at_level(logging.INFO, logger="corral.audit"):
            made = await c.post("/api/keys", json={"scopes": ["infer"], "name": "bot"})
        assert made.status_code == 201 and made.json()["key"].startswith("crl_")
        assert any(r.name == "corral.audit" and r.key_id == admin.id  # type: ignore[attr-defined]
                   for r in caplog.records)
        listed = (await c.get("/api/keys")).json()["keys"]
        assert {k["name"] for k in listed} == {"root", "", "bot"} and all("hash" not in k for k in listed)
        bad = await c.post("/api/keys", json={"scopes": ["superuser"]})
        assert bad.status_code == 400
        bot_key = made.json()["key"]
        async with client(app, authorization=f"Bearer {bot_key}") as bot:
            assert (await bot.get("/api/tags")).status_code == 403  # infer only
        assert (await c.delete(f"/api/keys/{made.json()['id']}")).status_code == 200
        async with client(app, authorization=f"Bearer {bot_key}") as bot:
            assert (await bot.post("/api/generate", json={"model": "x"})).status_code == 401
    async with client(app, authorization=f"Bearer {read_key}") as c:
        assert (await c.get("/api/keys")).status_code == 403


async def test_injected_services_are_the_ones_used(tmp_path: Path) -> None:
    """create_app takes authentication, rate limits and metrics from its caller (`corral serve`
    builds them; a test passes its own): nothing is rebuilt from the settings behind its back."""
    elsewhere = KeyStore(tmp_path / "elsewhere" / "keys.json")
    _, plain = elsewhere.create("read")
    metrics = ServerMetrics()
    services = Services(auth=Authenticator(elsewhere), keys=elsewhere, limiter=RateLimiter(2), metrics=metrics)
    cfg = Settings(home=tmp_path / "home", models=tmp_path / "models", noprune=True)  # no keys, no limits here
    app = create_app(cfg, Store(cfg.models_dir), services=services)
    assert (await call(app, "read")).status_code == 401  # the injected key store has a key
    auth = {"authorization": f"Bearer {plain}"}
    assert [(await call(app, "read", **auth)).status_code for _ in range(3)] == [200, 200, 429]
    assert _sample(metrics.render().decode(), "corral_http_requests_total{") == 4  # the injected metrics count
