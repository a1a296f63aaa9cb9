"""The /ui web page in-process: served from the package with a strict CSP, public while every API
route keeps its scope, same-origin requests from the page pass the CORS check, cross-origin ones
still do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.auth.keys import KeyStore
from corral.auth.scopes import required_scope
from corral.server.ui import ASSETS, CSP
from tests.appenv import client, make_app

pytestmark = pytest.mark.anyio


def test_assets_ship_in_the_package_and_reference_nothing_remote() -> None:
    assert {"index.html", "app.js", "api.js", "markdown.js", "panels.js", "store.js", "style.css"} <= set(ASSETS)
    for name, (body, _) in ASSETS.items():
        text = body.decode()
        assert "http://" not in text.replace("http://localhost", "") or name == "markdown.js", name
        assert "cdn" not in text.lower() or name == "markdown.js", name
        assert "<script>" not in text and "onclick=" not in text, f"{name}: inline script breaks the CSP"


async def test_page_and_assets_served_with_security_headers(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with client(app) as c:
        root = await c.get("/")
        assert root.status_code == 200 and root.text == "Ollama is running"
        redirect = await c.get("/ui")
        assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
        page = await c.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="app.js">' in page.text
        assert page.headers["content-security-policy"] == CSP and "default-src 'self'" in CSP
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
        js = await c.get("/ui/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert js.headers["content-security-policy"] == CSP
        css = await c.get("/ui/style.css")
        assert css.headers["content-type"].startswith("text/css")
        for path in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/%2e%2e/__init__.py", "/ui/static"):
            assert (await c.get(path)).status_code == 404, path


async def test_ui_is_public_but_the_api_still_needs_a_key(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    _, plain = KeyStore(tmp_path / "home" / "keys.json").create("read,infer")
    async with client(app) as c:
        assert (await c.get("/ui/")).status_code == 200
        assert (await c.get("/ui/api.js")).status_code == 200
        for method, path in (("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/chat"),
                             ("POST", "/api/pull"), ("GET", "/api/ps"), ("GET", "/metrics"),
                             ("POST", "/v1/chat/completions")):
            r = await c.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.status_code)
        assert (await c.post("/ui/", json={})).status_code == 401  # only GET/HEAD are open
        ok = await c.get("/api/tags", headers={"Authorization": f"Bearer {plain}"})
        assert ok.status_code == 200


def test_scope_rules_for_ui_paths() -> None:
    assert required_scope("GET", "/ui") is None and required_scope("GET", "/ui/app.js") is None
    assert required_scope("POST", "/ui/app.js") == "admin"
    assert required_scope("GET", "/uix") == "admin"  # a prefix lookalike is not the page
    assert required_scope("GET", "/api/tags") == "read" and required_scope("POST", "/api/chat") == "infer"


async def test_same_origin_passes_cors_and_cross_origin_does_not(tmp_path: Path) -> None:
    # A public bind (auth off, explicitly allowed) reached under a host name that is not in the
    # default origin list: the page's own POSTs carry Origin == its host and must pass.
    app = make_app(tmp_path, host="0.0.0.0:11434", allow_unauthenticated=True)
    async with client(app, base="http://llm.example.internal:11434") as c:
        same = await c.post("/api/show", json={"model": "nope"}, headers={"Origin": "http://llm.example.internal:11434"})
        assert same.status_code == 404  # reached the route: model not found
        other = await c.post("/api/show", json={"model": "nope"}, headers={"Origin": "http://evil.example:11434"})
        assert other.status_code == 403
        scheme = await c.post("/api/show", json={"model": "nope"},
                              headers={"Origin": "https://llm.example.internal:11434"})
        assert scheme.status_code == 403


async def test_loopback_host_check_still_applies_to_the_page(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with client(app, base="http://attacker.example:11434") as c:
        assert (await c.get("/ui/")).status_code == 403
        r = await c.post("/api/show", json={"model": "x"}, headers={"Origin": "http://attacker.example:11434"})
        assert r.status_code == 403
