"""A real `corral serve` configured by `$CORRAL_HOME/config.toml`: per-model defaults reach the
runner, the IP allow-list on real sockets (clients bound to other 127.x addresses), `/api/ws`
with the `websockets` client library, and `corral run` with llama.cpp-style flags."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from corral.auth.keys import KEYS_FILE, KeyStore
from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
CONFIG = """\
num_parallel = 4
context_length = 2048
allow_from = ["127.0.0.1", "127.0.0.2"]
trusted_proxies = ["127.0.0.2"]
header_timeout = "5s"

[allow_from_routes]
"/metrics" = ["127.0.0.2"]

[models."smollm2:135m"]
num_parallel = 2
num_ctx = 1536
keep_alive = "7m"
"""
LONG = {"num_predict": 100000, "temperature": 0}


class Srv:
    def __init__(self, server: ServerProcess, admin: str, infer: str) -> None:
        self.server, self.admin, self.infer = server, admin, infer
        self.ws_url = server.url.replace("http://", "ws://") + "/api/ws"

    def http(self, source: str = "127.0.0.1", key: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.server.url, transport=transport, headers=headers, timeout=120,
                            trust_env=False)

    def ws(self, key: str | None = None, source: str = "127.0.0.1") -> ClientConnection:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return connect(self.ws_url, additional_headers=headers, source_address=(source, 0), open_timeout=30)

    def ps(self) -> dict[str, Any]:
        with self.http(key=self.admin) as c:
            models: list[dict[str, Any]] = c.get("/api/ps").json()["models"]
        return models[0]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    home: Path = tmp_path_factory.mktemp("corral-config-home")
    (home / "config.toml").write_text(CONFIG, encoding="utf-8")
    keys = KeyStore(home / KEYS_FILE)
    admin, infer = keys.create("admin")[1], keys.create("infer")[1]
    with running_server(home, {"CORRAL_CONTEXT_LENGTH": ""}) as server:
        s = Srv(server, admin, infer)
        server.env["CORRAL_API_KEY"] = admin  # for the CLI runs; the server process has started
        with s.http(key=admin) as c:
            r = c.post("/api/pull", json={"model": MODEL, "stream": False}, timeout=300)
            assert r.status_code == 200, r.text
        yield s


def chat(rid: str, options: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"type": "chat", "id": rid, "model": MODEL, "options": options,
                       "messages": [{"role": "user", "content": "Count from one to one hundred."}], **extra})


def recv(ws: ClientConnection, timeout: float = 120) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return message


def until_ended(ws: ClientConnection, ids: set[str], timeout: float = 180) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    open_ids = set(ids)
    deadline = time.monotonic() + timeout
    while open_ids:
        msg = recv(ws, max(1.0, deadline - time.monotonic()))
        out.append(msg)
        if msg.get("done") or "error" in msg:
            open_ids.discard(msg.get("id", ""))
    return out


def test_per_model_defaults_reach_the_runner(srv: Srv) -> None:
    with srv.http(key=srv.admin) as c:
        r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                          "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text
        loaded = srv.ps()
        assert loaded["context_length"] == 1536  # [models."smollm2:135m"] over context_length = 2048
        until = datetime.fromisoformat(loaded["expires_at"].replace("Z", "+00:00"))
        assert 6 * 60 < (until - datetime.now(UTC)).total_seconds() <= 7 * 60 + 5
        r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "keep_alive": "20m",
                                          "options": {"num_predict": 2, "num_ctx": 768}})
        assert r.status_code == 200, r.text
        loaded = srv.ps()
        assert loaded["context_length"] == 768  # the request wins
        until = datetime.fromisoformat(loaded["expires_at"].replace("Z", "+00:00"))
        assert (until - datetime.now(UTC)).total_seconds() > 19 * 60


def test_allow_list_on_real_sockets(srv: Srv) -> None:
    with srv.http("127.0.0.3") as c:
        r = c.get("/api/version")
        assert r.status_code == 403 and r.json() == {"error": "forbidden: client address not allowed"}
    with srv.http("127.0.0.1") as c:
        assert c.get("/api/version").status_code == 401  # allowed address: on to authentication
    with srv.http("127.0.0.1", srv.admin) as c:
        assert c.get("/api/version").status_code == 200
        assert c.get("/metrics").status_code == 403  # the /metrics rule allows 127.0.0.2 only
        assert c.get("/metrics", headers={"X-Forwarded-For": "127.0.0.2"}).status_code == 403  # untrusted peer
    with srv.http("127.0.0.2", srv.admin) as c:
        assert c.get("/metrics").status_code == 200
        r = c.get("/api/version", headers={"X-Forwarded-For": "127.0.0.3"})  # trusted proxy, forwarded client
        assert r.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        srv.ws(srv.infer, source="127.0.0.3")
    assert refused.value.response.status_code == 403


def test_ws_two_requests_interleave_and_both_finish(srv: Srv) -> None:
    with srv.ws(srv.infer) as ws:
        ws.send(chat("a", {"num_predict": 24, "temperature": 0}, ignore_eos=True))
        ws.send(json.dumps({"type": "generate", "id": "b", "model": MODEL, "prompt": "Tell me a story.",
                            "ignore_eos": True, "options": {"num_predict": 24, "temperature": 0}}))
        messages = until_ended(ws, {"a", "b"})
    ids = [m["id"] for m in messages]
    finals = {m["id"]: m for m in messages if m.get("done")}
    assert set(finals) == {"a", "b"}, messages[-3:]
    assert finals["a"]["eval_count"] == 24 and finals["b"]["eval_count"] == 24
    last_a, last_b = len(ids) - 1 - ids[::-1].index("a"), len(ids) - 1 - ids[::-1].index("b")
    assert ids.index("b") < last_a and ids.index("a") < last_b  # interleaved, not one after the other
    assert any(m.get("message", {}).get("content") for m in messages if m["id"] == "a")
    assert any(m.get("response") for m in messages if m["id"] == "b")


def test_ws_cancel_frees_the_sequence(srv: Srv) -> None:
    # num_parallel = 2 for this model: "a" and "b" hold both sequences until one is freed
    with srv.ws(srv.infer) as ws:
        ws.send(chat("a", LONG, ignore_eos=True))
        ws.send(chat("b", LONG, ignore_eos=True))
        started: set[str] = set()
        while started != {"a", "b"}:
            started.add(recv(ws)["id"])
        ws.send(json.dumps({"type": "cancel", "id": "a"}))
        ws.send(chat("c", {"num_predict": 8, "temperature": 0}))
        messages = until_ended(ws, {"a", "c"})
        assert {"id": "a", "error": "request canceled", "status": 499} in messages
        final_c = next(m for m in messages if m["id"] == "c" and m.get("done"))
        assert final_c["eval_count"] <= 8
        assert not any(m["id"] == "b" and (m.get("done") or "error" in m) for m in messages)  # b still runs
        ws.send(json.dumps({"type": "cancel", "id": "b"}))
        assert until_ended(ws, {"b"})[-1] == {"id": "b", "error": "request canceled", "status": 499}


def test_ws_closing_the_socket_cancels(srv: Srv) -> None:
    with srv.ws(srv.infer) as ws:
        ws.send(chat("a", LONG, ignore_eos=True))
        ws.send(chat("b", LONG, ignore_eos=True))
        started: set[str] = set()
        while started != {"a", "b"}:
            started.add(recv(ws)["id"])
    with srv.ws(srv.infer) as ws:  # both sequences must have been freed for this to run
        ws.send(chat("c", {"num_predict": 4, "temperature": 0}))
        assert until_ended(ws, {"c"}, timeout=120)[-1]["done"] is True


def test_ws_errors_and_authentication(srv: Srv) -> None:
    with srv.ws() as ws:  # keys exist: the first message must authenticate
        ws.send(chat("a", {"num_predict": 1}))
        err = recv(ws)
        assert err["type"] == "error" and err["status"] == 401
        with pytest.raises(ConnectionClosed):
            recv(ws)
    with pytest.raises(InvalidStatus) as denied:
        srv.ws("crl_not_a_key")
    assert denied.value.response.status_code == 401
    with srv.ws() as ws:
        ws.send(json.dumps({"type": "auth", "key": srv.infer}))
        ws.send("{oops")
        assert recv(ws)["error"].startswith("invalid JSON")
        ws.send(json.dumps({"type": "nope", "id": "x"}))
        assert "unknown message type" in recv(ws)["error"]
        ws.send(chat("ok", {"num_predict": 2}))
        assert until_ended(ws, {"ok"})[-1]["done"] is True


def test_ws_outlives_the_header_deadline(srv: Srv) -> None:
    # the slow-loris deadline (header_timeout, 5 s here) guards request headers; an upgraded
    # socket is past them and must not be cut when it fires
    with srv.ws(srv.infer) as ws:
        time.sleep(6)  # idle past the deadline: the behaviour under test
        ws.send(json.dumps({"type": "ping", "id": 1}))
        assert recv(ws, 30) == {"type": "pong", "id": 1}


def test_corral_run_llama_flags(srv: Srv) -> None:
    done = srv.server.cli("run", MODEL, "--ctx-size", "1024", "--temp", "0", "--seed", "1", "-n", "8",
                          "--verbose", "hi", timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    count = re.search(r"eval count:\s+(\d+) token", done.stderr.split("prompt eval count")[-1])
    assert count is not None and 1 <= int(count.group(1)) <= 8, done.stderr
    assert srv.ps()["context_length"] == 1024
    bad = srv.server.cli("run", MODEL, "--parameter", "nope=1", "hi")
    assert bad.returncode == 2 and "unknown option 'nope'" in bad.stderr
    bad = srv.server.cli("run", MODEL, "--parameter", "temperature=hot", "hi")
    assert bad.returncode == 2 and "temperature: invalid float value [hot]" in bad.stderr
    helped = srv.server.cli("run", "--help")
    for flag in ("--num-gpu-layers", "-ngl", "--ctx-size", "--temp", "--top-k", "--top-p", "--seed",
                 "--threads", "--n-predict", "--repeat-penalty", "--parameter"):
        assert flag in helped.stdout
