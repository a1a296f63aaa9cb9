"""Request bodies no route can use (unpaired UTF-16 surrogates, nesting past the limit) are 400s in
each API family's error format, decided once before routing (`corral.server.ops.bodycheck`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from corral.errors import BadRequestError
from corral.server.ops.bodycheck import MAX_JSON_DEPTH, check_json_body, nesting_depth, unpaired_surrogate
from tests.appenv import Env, run

LONE = "\\ud800"  # the six characters of a JSON escape, as a client writes them


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# -- the checks themselves -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('"a\\ud800b"', "\\ud800"),
        ('"\\uDC00"', "\\uDC00"),
        ('"\\ud83d"', "\\ud83d"),
        ('"\\ud83d\\u0041"', "\\ud83d"),
        ('"\\ud83d\\ud83d\\ude00"', "\\ud83d"),
        ('"\\ude00\\ud83d"', "\\ude00"),
        ('"x\\\\\\ud800"', "\\ud800"),  # an escaped backslash, then a real escape
        ('"\\ud83d\\ude00"', None),  # a valid pair (an emoji as ensure_ascii writes it)
        ('"\\\\ud800"', None),  # an escaped backslash followed by the letters ud800
        ('"\\\\\\\\ud800"', None),
        ('"\\u00e9\\ud7ff\\ue000"', None),
        ('"\\ud83d\\ude00\\ud83d\\ude01"', None),
    ],
)
def test_unpaired_surrogate_finds_only_real_lone_escapes(text: str, found: str | None) -> None:
    assert unpaired_surrogate(text) == found
    decoded = json.loads(text)
    try:
        decoded.encode()
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    assert encodable == (found is None)


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth('{"a": [[1], {"b": "[[[[{{{{"}]}') == 3
    assert nesting_depth('"[[[\\"[["') == 0
    assert nesting_depth("[]" * 1000) == 1


def test_check_json_body_limits() -> None:
    check_json_body(b"")
    check_json_body(json.dumps({"emoji": "\U0001f600", "deep": _nested(MAX_JSON_DEPTH - 1)}).encode())
    check_json_body(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode())
    with pytest.raises(BadRequestError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        check_json_body(("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode())
    with pytest.raises(BadRequestError, match="unpaired UTF-16 surrogate"):
        check_json_body(b'{"a": "\\ud800"}')
    with pytest.raises(BadRequestError, match="not valid utf-8"):
        check_json_body(b'{"a": "\xed\xa0\x80"}')  # a surrogate as raw (CESU-8) bytes


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


# -- every API family, one place -------------------------------------------------------------------
NATIVE = [
    ("/api/chat", '{"model":"tiny","messages":[{"role":"user","content":"a%sb"}]}'),
    ("/api/chat", '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"format":{"title":"%s"}}'),
    ("/api/generate", '{"model":"tiny","prompt":"x%s"}'),
    ("/api/generate", '{"model":"ti%sny","prompt":"x"}'),
    ("/api/embed", '{"model":"tiny","input":["%s"]}'),
    ("/api/show", '{"model":"tiny%s"}'),
    ("/api/create", '{"model":"new","from":"tiny","system":"be %s"}'),
    ("/api/create", '{"model":"n%sw","from":"tiny"}'),
    ("/api/copy", '{"source":"tiny","destination":"x%s"}'),
    ("/api/chat", '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"k%s":1}'),
]
OPENAI = [
    ("/v1/chat/completions", '{"model":"tiny","messages":[{"role":"user","content":"a%sb"}]}'),
    ("/v1/chat/completions", '{"model":"tiny","stream":true,"messages":[{"role":"user","content":"%s"}]}'),
    ("/v1/completions", '{"model":"tiny","prompt":"%s"}'),
    ("/v1/embeddings", '{"model":"tiny","input":"%s"}'),
    ("/v1/responses", '{"model":"tiny","input":"%s"}'),
]
ANTHROPIC = [
    ("/v1/messages", '{"model":"tiny","max_tokens":8,"messages":[{"role":"user","content":"%s"}]}'),
    ("/v1/messages", '{"model":"tiny","max_tokens":8,"system":"%s","messages":[{"role":"user","content":"x"}]}'),
]


def _post(env: Env, path: str, body: str) -> Any:
    async def main() -> Any:
        async with env.client() as c:
            return await c.post(path, content=body.encode(), headers={"content-type": "application/json"})
    return run(main())


@pytest.mark.parametrize(("path", "body"), NATIVE)
def test_native_routes_answer_400_for_a_lone_surrogate(env: Env, path: str, body: str) -> None:
    r = _post(env, path, body % LONE)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and "unpaired UTF-16 surrogate" in error
    assert env.prompts == []


@pytest.mark.parametrize(("path", "body"), OPENAI)
def test_openai_routes_answer_400_for_a_lone_surrogate(env: Env, path: str, body: str) -> None:
    r = _post(env, path, body % LONE)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "unpaired UTF-16 surrogate" in error["message"]
    assert env.prompts == []


@pytest.mark.parametrize(("path", "body"), ANTHROPIC)
def test_anthropic_route_answers_400_for_a_lone_surrogate(env: Env, path: str, body: str) -> None:
    r = _post(env, path, body % LONE)
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert "unpaired UTF-16 surrogate" in data["error"]["message"]


@pytest.mark.parametrize(("path", "body"), [NATIVE[0], OPENAI[0], ANTHROPIC[0]])
def test_a_valid_surrogate_pair_still_works(env: Env, path: str, body: str) -> None:
    r = _post(env, path, body % "\\ud83d\\ude00")
    assert r.status_code == 200, r.text
    assert "\U0001f600" in env.prompts[0]


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 5000])
def test_deeply_nested_bodies_are_400s_naming_the_limit(env: Env, levels: int) -> None:
    deep = "[" * levels + "]" * levels
    cases = [
        ("/api/chat", '{"model":"tiny","messages":[{"role":"user","content":"x"}],"options":{"stop":%s}}', str),
        ("/v1/chat/completions", '{"model":"tiny","messages":[{"role":"user","content":"x"}],"stop":%s}', dict),
        ("/v1/messages", '{"model":"tiny","max_tokens":8,"messages":[{"role":"user","content":%s}]}', dict),
    ]
    for path, body, shape in cases:
        r = _post(env, path, body % deep)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        message = error if shape is str else error["message"]
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message
    assert env.prompts == []


def test_blob_uploads_are_not_inspected(env: Env) -> None:
    data = b'"\\ud800' + b"[" * 500
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def main() -> Any:
        async with env.client() as c:
            return await c.post(f"/api/blobs/{digest}", content=data)
    assert run(main()).status_code == 201


def test_websocket_messages_are_checked_like_bodies_and_the_socket_stays_usable(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    app = Env(tmp_path).app
    chat = '{"type":"chat","id":1,"model":"tiny","messages":[{"role":"user","content":"%s"}]}'
    with TestClient(app, base_url="http://127.0.0.1:11434") as client, \
            client.websocket_connect("ws://127.0.0.1:11434/api/ws") as ws:
        ws.send_text(chat % LONE)
        assert "unpaired UTF-16 surrogate" in ws.receive_json()["error"]
        ws.send_text('{"type":"ping","id":2,"x":' + "[" * 300 + "]" * 300 + "}")
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in ws.receive_json()["error"]
        ws.send_json({"type": "ping", "id": 3})
        assert ws.receive_json() == {"type": "pong", "id": 3}
