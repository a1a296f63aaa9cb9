"""IP allow-lists in-process: the policy's decisions, and the middleware refusing before auth."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.auth.keys import KEYS_FILE, KeyStore
from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.scheduler import Scheduler
from corral.server.app import create_app
from corral.server.ops.allowlist import AllowPolicy
from corral.store.store import Store


def test_policy_rules_longest_prefix_wins() -> None:
    policy = AllowPolicy(["10.0.0.0/8", "192.168.1.5", "::1"], {"/metrics": ["127.0.0.2"], "/api/": []})
    assert policy.permits("/api/version", "203.0.113.9")  # an empty route list opens that prefix
    assert policy.permits("/", "10.1.2.3") and policy.permits("/", "192.168.1.5")
    assert not policy.permits("/", "192.168.1.6") and not policy.permits("/", "127.0.0.1")
    assert policy.permits("/", "::ffff:10.0.0.1") and policy.permits("/", "::1")
    assert policy.permits("/metrics", "127.0.0.2") and not policy.permits("/metrics", "10.0.0.1")
    assert not policy.permits("/", "testclient") and not policy.permits("/", "")
    assert AllowPolicy().permits("/", "anything") and not AllowPolicy().active


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("127.0.0.1", "10.0.0.7", "10.0.0.7"),                    # trusted proxy: believe it
        ("10.9.9.9", "127.0.0.1", "10.9.9.9"),                    # untrusted peer: ignore the header
        ("127.0.0.1", "6.6.6.6, 10.0.0.7, 127.0.0.5", "10.0.0.7"),  # skip trusted hops from the right
        ("127.0.0.1", "127.0.0.5", "127.0.0.5"),                  # all trusted: the leftmost
        ("127.0.0.1", "garbage", "garbage"),                      # unparseable: never permitted
        ("127.0.0.1", None, "127.0.0.1"),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(peer: str, xff: str | None, client: str) -> None:
    policy = AllowPolicy(["10.0.0.0/8"], trusted_proxies=["127.0.0.0/24"])
    assert policy.client_address(peer, xff) == client


class App:
    def __init__(self, tmp_path: Path, *, keys: bool = False, **settings: Any) -> None:
        self.settings = Settings(home=tmp_path, **settings)
        self.scheduler = Scheduler(ScriptedEngine(), self.settings)
        self.app = create_app(self.settings, Store(tmp_path / "models"), scheduler=self.scheduler,
                              prune_on_start=False)
        self.key = KeyStore(tmp_path / KEYS_FILE).create("read")[1] if keys else None

    def get(self, path: str, ip: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def main() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(ip, 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
                return await c.get(path, headers=headers or {})
        return asyncio.run(main())


def test_refused_before_authentication_in_the_route_format(tmp_path: Path) -> None:
    app = App(tmp_path, keys=True, allow_from=("10.0.0.0/8",), allow_from_routes={"/metrics": ("10.0.0.9",)})
    r = app.get("/api/tags", "192.168.0.2")
    assert r.status_code == 403 and r.json() == {"error": "forbidden: client address not allowed"}
    r = app.get("/v1/models", "192.168.0.2")
    assert r.status_code == 403 and r.json()["error"]["message"] == "forbidden: client address not allowed"
    assert app.get("/api/tags", "10.0.0.2").status_code == 401  # allowed through to auth
    auth = {"Authorization": f"Bearer {app.key}"}
    assert app.get("/api/tags", "10.0.0.2", auth).status_code == 200
    assert app.get("/metrics", "10.0.0.2", auth).status_code == 403  # route rule replaces allow_from
    assert app.get("/metrics", "10.0.0.9", auth).json()["error"] != "forbidden: client address not allowed"


def test_forwarded_client_is_what_downstream_sees(tmp_path: Path) -> None:
    app = App(tmp_path, allow_from=("10.0.0.0/8",), trusted_proxies=("127.0.0.1",), rate_limit_rpm=1)
    assert app.get("/api/tags", "127.0.0.1").status_code == 403
    assert app.get("/api/tags", "127.0.0.1", {"X-Forwarded-For": "10.0.0.7"}).status_code == 200
    assert app.get("/api/tags", "10.0.0.8", {"X-Forwarded-For": "10.0.0.7"}).status_code == 200
    # the rate limiter keys anonymous callers by address: the forwarded 10.0.0.7 is now spent
    assert app.get("/api/tags", "127.0.0.1", {"X-Forwarded-For": "10.0.0.7"}).status_code == 429
    assert app.get("/api/tags", "127.0.0.1", {"X-Forwarded-For": "10.0.0.6"}).status_code == 200
