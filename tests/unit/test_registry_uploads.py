"""`/v2/` blob upload sessions: expiry, cap, no descriptor held between requests, leftovers
cleaned at start, `Content-Range` checks (400/416), chunk rollback, disk full (507)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from corral.config import Settings
from corral.server.app import create_app
from corral.server.native.uploads import UploadSessions
from corral.store.blobs import TEMP_PREFIX
from corral.store.store import Store
from tests.diskfull import fill_disk

BASE = "http://127.0.0.1:11434/v2/team/m/blobs/uploads/"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(tmp_path: Path, **sessions: Any) -> tuple[FastAPI, Store]:
    store = Store(tmp_path / "models")
    app = create_app(Settings(home=tmp_path, noprune=True), store)
    if sessions:
        app.state.ctx.uploads = UploadSessions(store.blobs, **sessions)
    return app, store


def temps(store: Store) -> list[str]:
    return [n for n in store.blobs.list_names() if n.startswith(TEMP_PREFIX)]


def serve(app: FastAPI, body: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
            await body(c)

    asyncio.run(main())


def open_temp_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if TEMP_PREFIX in os.readlink(f"/proc/self/fd/{fd}"):
                count += 1
        except OSError:
            pass
    return count


def test_idle_sessions_expire_and_free_their_temp_files(tmp_path: Path) -> None:
    clock = Clock()
    app, store = make_app(tmp_path, idle_timeout=600, clock=clock)

    async def body(c: httpx.AsyncClient) -> None:
        old = (await c.post(BASE)).headers["Location"]
        assert (await c.patch(old, content=b"abc", headers={"Content-Range": "0-2"})).status_code == 202
        clock.now += 300
        kept = (await c.post(BASE)).headers["Location"]
        assert len(temps(store)) == 2
        clock.now += 301  # `old` idle 601 s, `kept` 301 s
        r = await c.patch(old, content=b"def", headers={"Content-Range": "3-5"})
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert len(temps(store)) == 1
        assert (await c.patch(kept, content=b"x", headers={"Content-Range": "0-0"})).status_code == 202

    serve(app, body)


def test_abandoned_session_is_removed_by_the_timer_without_further_requests(tmp_path: Path) -> None:
    app, store = make_app(tmp_path, idle_timeout=0.3)

    async def body(c: httpx.AsyncClient) -> None:
        loc = (await c.post(BASE)).headers["Location"]
        await c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
        assert len(temps(store)) == 1
        deadline = time.monotonic() + 30
        while temps(store) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert temps(store) == []
        assert (await c.get(loc)).status_code == 404

    serve(app, body)


def test_no_file_descriptor_is_held_between_requests(tmp_path: Path) -> None:
    app, store = make_app(tmp_path)
    before = open_temp_fds()

    async def body(c: httpx.AsyncClient) -> None:
        for _ in range(20):
            loc = (await c.post(BASE)).headers["Location"]
            await c.patch(loc, content=b"chunk", headers={"Content-Range": "0-4"})
        assert len(temps(store)) == 20
        assert open_temp_fds() == before

    serve(app, body)


def test_open_sessions_are_capped_with_a_clear_429(tmp_path: Path) -> None:
    app, store = make_app(tmp_path, max_sessions=3)

    async def body(c: httpx.AsyncClient) -> None:
        locs = [(await c.post(BASE)).headers["Location"] for _ in range(3)]
        r = await c.post(BASE)
        assert r.status_code == 429 and "Retry-After" in r.headers
        err = r.json()["errors"][0]
        assert err["code"] == "TOOMANYREQUESTS" and "too many blob uploads in progress (3)" in err["message"]
        assert (await c.delete(locs[0])).status_code == 204
        assert len(temps(store)) == 2
        assert (await c.post(BASE)).status_code == 202

    serve(app, body)


def test_leftover_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    blobs = tmp_path / "models" / "blobs"
    blobs.mkdir(parents=True)
    stale, fresh, partial = blobs / f"{TEMP_PREFIX}dead", blobs / f"{TEMP_PREFIX}live", blobs / "sha256-ab-partial"
    for p in (stale, fresh, partial):
        p.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(partial, (old, old))
    make_app(tmp_path)  # noprune: only the upload clean-up runs
    assert not stale.exists()
    assert fresh.exists() and partial.exists()  # a live writer's file; a resumable download


@pytest.mark.parametrize("crange", ["abc", "-5", "5-", "1-2-3", "0x1-3", " - ", "+3-5", "3-5/6", "bytes=3-5"])
def test_malformed_content_range_is_400_and_leaves_the_upload_usable(tmp_path: Path, crange: str) -> None:
    app, store = make_app(tmp_path)

    async def body(c: httpx.AsyncClient) -> None:
        loc = (await c.post(BASE)).headers["Location"]
        assert (await c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})).status_code == 202
        r = await c.patch(loc, content=b"def", headers={"Content-Range": crange})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        r = await c.patch(loc, content=b"def", headers={"Content-Range": "3-5"})
        assert r.status_code == 202 and r.headers["Range"] == "0-5"
        digest = "sha256:" + hashlib.sha256(b"abcdef").hexdigest()
        assert (await c.put(f"{loc}?digest={digest}")).status_code == 201
        assert store.blobs.path(digest).read_bytes() == b"abcdef"

    serve(app, body)


@pytest.mark.parametrize("crange", ["0-2", "4-6", "5-3", "3-2"])
def test_out_of_order_range_is_416(tmp_path: Path, crange: str) -> None:
    app, _ = make_app(tmp_path)

    async def body(c: httpx.AsyncClient) -> None:
        loc = (await c.post(BASE)).headers["Location"]
        await c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
        r = await c.patch(loc, content=b"def", headers={"Content-Range": crange})
        assert r.status_code == 416 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        status = await c.get(loc)
        assert status.status_code == 204 and status.headers["Range"] == "0-2"

    serve(app, body)


def test_chunk_shorter_than_its_range_is_400_and_undone(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)

    async def body(c: httpx.AsyncClient) -> None:
        loc = (await c.post(BASE)).headers["Location"]
        await c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
        r = await c.patch(loc, content=b"de", headers={"Content-Range": "3-9"})
        assert r.status_code == 400 and "announces 7 bytes" in r.json()["errors"][0]["message"]
        assert (await c.get(loc)).headers["Range"] == "0-2"
        await c.patch(loc, content=b"xyz", headers={"Content-Range": "3-5"})
        digest = "sha256:" + hashlib.sha256(b"abcxyz").hexdigest()
        assert (await c.put(f"{loc}?digest={digest}")).status_code == 201

    serve(app, body)


def test_wrong_final_digest_stores_nothing(tmp_path: Path) -> None:
    app, store = make_app(tmp_path)

    async def body(c: httpx.AsyncClient) -> None:
        loc = (await c.post(BASE)).headers["Location"]
        await c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
        r = await c.put(f"{loc}?digest=sha256:{'1' * 64}")
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert store.blobs.list_names() == []

    serve(app, body)


def test_disk_full_during_a_chunk_is_507_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, store = make_app(tmp_path)

    async def body(c: httpx.AsyncClient) -> None:
        loc = (await c.post(BASE)).headers["Location"]
        assert (await c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})).status_code == 202
        fill_disk(monkeypatch, TEMP_PREFIX)
        r = await c.patch(loc, content=b"x" * 100_000, headers={"Content-Range": "3-100002"})
        assert r.status_code == 507
        message = r.json()["errors"][0]["message"]
        assert "no space left on device while writing blob" in message and "free" in message
        assert str(store.blobs.root) in message
        assert store.blobs.list_names() == []
        assert (await c.get(loc)).status_code == 404

    serve(app, body)
