"""`/api/ws` in-process (Starlette's test client) over the scripted engine: multiplexing, cancel,
errors that keep the socket usable, authentication, rate limits and the queue bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from corral.auth.keys import KEYS_FILE, KeyStore
from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.scheduler import Scheduler
from corral.server.app import create_app
from corral.store.store import Store
from tests.appenv import make_model

WS = "ws://127.0.0.1:11434/api/ws"
WORDS = [f" w{i}" for i in range(400)]


class Env:
    def __init__(self, tmp_path: Path, *, delay: float = 0.005, **settings: Any) -> None:
        self.settings = Settings(home=tmp_path, **settings)
        self.engine = ScriptedEngine(words=WORDS, delay=delay)
        self.scheduler = Scheduler(self.engine, self.settings)
        store = Store(tmp_path / "models")
        make_model(store, tmp_path, "tiny", template="{{ .Prompt }}")
        self.app = create_app(self.settings, store, scheduler=self.scheduler, prune_on_start=False)
        self.keys = KeyStore(tmp_path / KEYS_FILE)

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="http://127.0.0.1:11434")

    def active(self) -> int:
        return sum(r.active for r in self.engine.runners)

    def wait_idle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.active() == 0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield Env(tmp_path)


def chat(rid: Any, n: int = 5, **extra: Any) -> dict[str, Any]:
    return {"type": "chat", "id": rid, "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": n}, **extra}


def until_done(ws: Any, ids: set[Any]) -> list[dict[str, Any]]:
    """Receive until every id in `ids` has ended (done or error)."""
    out: list[dict[str, Any]] = []
    open_ids = set(ids)
    while open_ids:
        msg = ws.receive_json()
        out.append(msg)
        if msg.get("done") or "error" in msg:
            open_ids.discard(msg.get("id"))
    return out


def test_two_requests_interleave_on_one_socket(env: Env) -> None:
    with env.client() as client, client.websocket_connect(WS) as ws:
        ws.send_json(chat("a", 20))
        ws.send_json({"type": "generate", "id": 7, "model": "tiny", "prompt": "yo", "options": {"num_predict": 20}})
        messages = until_done(ws, {"a", 7})
    ids = [m["id"] for m in messages]
    assert ids.count("a") == 21 and ids.count(7) == 21
    assert ids.index(7) < len(ids) - 1 - ids[::-1].index("a") - 1  # a 7 arrives before a's last chunk
    finals = {m["id"]: m for m in messages if m.get("done")}
    assert finals["a"]["message"]["role"] == "assistant" and finals["a"]["eval_count"] == 20
    assert finals[7]["done_reason"] == "length" and "response" in finals[7]
    text = "".join(m["message"]["content"] for m in messages if m["id"] == "a")
    assert text == "".join(WORDS[:20])


def test_cancel_frees_the_sequence_and_the_socket_goes_on(env: Env) -> None:
    with env.client() as client, client.websocket_connect(WS) as ws:
        ws.send_json(chat("long", -1))
        assert ws.receive_json()["id"] == "long"
        assert env.active() == 1
        ws.send_json({"type": "cancel", "id": "long"})
        messages = until_done(ws, {"long"})
        assert messages[-1] == {"id": "long", "error": "request canceled", "status": 499}
        assert env.active() == 0  # freed before the cancel was acknowledged
        ws.send_json({"type": "cancel", "id": "long"})
        assert ws.receive_json() == {"type": "error", "error": "no running request with id 'long'", "status": 400}
        ws.send_json(chat("next", 3, stream=False))
        final = ws.receive_json()
        assert final["id"] == "next" and final["done"] and final["message"]["content"] == "".join(WORDS[:3])


def test_closing_the_socket_cancels_its_requests(env: Env) -> None:
    with env.client() as client:
        with client.websocket_connect(WS) as ws:
            ws.send_json(chat("a", -1))
            ws.send_json(chat("b", -1))
            seen = {ws.receive_json()["id"], ws.receive_json()["id"], ws.receive_json()["id"]}
            assert env.active() == 2 and seen <= {"a", "b"}
        env.wait_idle()
        assert env.scheduler.snapshot()[0].refcount == 0


def test_bad_messages_get_errors_and_the_socket_stays_usable(env: Env) -> None:
    with env.client() as client, client.websocket_connect(WS) as ws:
        ws.send_text("{not json")
        err = ws.receive_json()
        assert err["type"] == "error" and err["status"] == 400 and err["error"].startswith("invalid JSON")
        for bad, text in [
            ({"type": "dance", "id": 1}, "unknown message type 'dance'"),
            ([1, 2], "a message must be a JSON object"),
            ({"type": "chat", "model": "tiny"}, "every request needs an id"),
            ({"type": "auth", "key": "x"}, "already authenticated"),
        ]:
            ws.send_json(bad)
            err = ws.receive_json()
            assert err["type"] == "error" and err["status"] == 400 and err["error"].startswith(text), err
        ws.send_bytes(b"\x00")
        assert "binary" in ws.receive_json()["error"]
        ws.send_json({"type": "chat", "id": "v", "model": "tiny", "messages": "nope"})
        err = ws.receive_json()
        assert err["id"] == "v" and err["status"] == 400 and err["error"].startswith("messages")
        ws.send_json(chat("m", model="missing"))
        assert ws.receive_json() == {"id": "m", "error": "model 'missing' not found", "status": 404}
        ws.send_json({"type": "ping", "id": 3})
        assert ws.receive_json() == {"type": "pong", "id": 3}
        ws.send_json(chat("ok", 2))
        assert until_done(ws, {"ok"})[-1]["done"] is True


def test_duplicate_running_id_is_refused(env: Env) -> None:
    with env.client() as client, client.websocket_connect(WS) as ws:
        ws.send_json(chat("a", -1))
        ws.receive_json()
        ws.send_json(chat("a", 1))
        message = ws.receive_json()
        while "type" not in message:  # chunks of the running "a"
            message = ws.receive_json()
        assert message == {"type": "error", "error": "a request with id 'a' is already running", "status": 400}
        ws.send_json({"type": "cancel", "id": "a"})
        assert until_done(ws, {"a"})[-1]["status"] == 499


def test_authentication_when_keys_exist(env: Env) -> None:
    infer = env.keys.create("infer")[1]
    read = env.keys.create("read")[1]
    with env.client() as client:
        with client.websocket_connect(WS) as ws:
            ws.send_json(chat("a"))
            err = ws.receive_json()
            assert err["type"] == "error" and err["status"] == 401
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008
        with client.websocket_connect(WS, headers={"Authorization": f"Bearer {infer}"}) as ws:
            ws.send_json(chat("a", 2))
            assert until_done(ws, {"a"})[-1]["done"] is True
        with client.websocket_connect(WS) as ws:
            ws.send_json({"type": "auth", "key": infer})
            ws.send_json(chat("b", 2))
            assert until_done(ws, {"b"})[-1]["done"] is True
        with client.websocket_connect(WS) as ws:
            ws.send_json({"type": "auth", "key": read})
            assert ws.receive_json() == {"type": "error", "status": 403,
                                         "error": "forbidden: this key lacks the 'infer' scope"}
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(WS, headers={"x-api-key": "crl_bogus"}):
                pass
        assert denied.value.status_code == 401
        assert denied.value.json() == {"error": "unauthorized: invalid API key"}


def test_foreign_origin_is_refused(env: Env) -> None:
    with env.client() as client, pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect(WS, headers={"Origin": "https://evil.example"}):
            pass
    assert denied.value.status_code == 403


def test_rate_limit_applies_per_request(tmp_path: Path) -> None:
    env = Env(tmp_path, rate_limit_rpm=1)
    with env.client() as client, client.websocket_connect(WS) as ws:
        ws.send_json(chat("a", 1))
        assert until_done(ws, {"a"})[-1]["done"] is True
        ws.send_json(chat("b", 1))
        err = ws.receive_json()
        assert err["id"] == "b" and err["status"] == 429 and err["retry_after"] >= 1


def test_queue_bound_applies(tmp_path: Path) -> None:
    env = Env(tmp_path, num_parallel=1, max_queue=1)
    with env.client() as client, client.websocket_connect(WS) as ws:
        ws.send_json(chat("run", -1))
        assert ws.receive_json()["id"] == "run"
        ws.send_json(chat("wait", 1))
        deadline = time.monotonic() + 10
        while env.scheduler.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        ws.send_json(chat("over", 1))
        messages = []
        while not any(m.get("id") == "over" and "error" in m for m in messages):
            messages.append(ws.receive_json())
        assert messages[-1]["status"] == 503 and "maximum pending requests" in messages[-1]["error"]
        ws.send_json({"type": "cancel", "id": "run"})
        assert until_done(ws, {"run", "wait"})
