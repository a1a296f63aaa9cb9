"""Hostile-but-valid JSON on a real server: unpaired UTF-16 surrogates and deep nesting are 400s in
each API's error format (never a 500 or a dropped keep-alive connection), and /api/chat truncation
of very long conversations is fast."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
LONE = "\\ud800"
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
             "options": {"num_predict": 1, "temperature": 0}}


def native_error(data: Any) -> str:
    assert isinstance(data["error"], str)
    return str(data["error"])


def openai_error(data: Any) -> str:
    assert data["error"]["type"] == "invalid_request_error"
    return str(data["error"]["message"])


def anthropic_error(data: Any) -> str:
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    return str(data["error"]["message"])


class Connection:
    """One keep-alive HTTP/1.1 connection; `same` tells whether the socket survived a request."""

    def __init__(self, server: ServerProcess) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        self.sock: Any = None

    def post(self, path: str, body: bytes | str) -> tuple[int, Any]:
        data = body.encode() if isinstance(body, str) else body
        self.conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        payload = json.loads(response.read() or b"null")
        return response.status, payload

    def remember(self) -> None:
        self.sock = self.conn.sock

    @property
    def same(self) -> bool:
        return self.sock is not None and self.conn.sock is self.sock

    def close(self) -> None:
        self.conn.close()


SURROGATE_CASES = [
    ("/api/chat", '{"model":"%s","messages":[{"role":"user","content":"a\\ud800b"}],"stream":false}', native_error),
    ("/api/chat", '{"model":"%s","messages":[{"role":"user","content":"x"}],"stream":true,'
                  '"options":{"stop":["\\udc00"]}}', native_error),
    ("/api/generate", '{"model":"%s","prompt":"\\ud800","stream":false}', native_error),
    ("/api/create", '{"model":"surrogate-test","from":"%s","system":"be \\ud800"}', native_error),
    ("/api/create", '{"model":"surrogate\\ud800","from":"%s"}', native_error),
    ("/api/show", '{"model":"%s\\ud800"}', native_error),
    ("/v1/chat/completions", '{"model":"%s","messages":[{"role":"user","content":"\\ud800"}]}', openai_error),
    ("/v1/chat/completions", '{"model":"%s","stream":true,"messages":[{"role":"user","content":"\\ud800"}]}',
     openai_error),
    ("/v1/messages", '{"model":"%s","max_tokens":4,"messages":[{"role":"user","content":"\\ud800"}]}',
     anthropic_error),
]


@pytest.mark.parametrize(("path", "body", "shape"), SURROGATE_CASES)
def test_lone_surrogate_is_a_400_and_the_connection_stays_usable(server: ServerProcess, path: str, body: str,
                                                                   shape: Any) -> None:
    conn = Connection(server)
    try:
        status, data = conn.post(path, body % MODEL)
        assert status == 400, data
        assert "unpaired UTF-16 surrogate" in shape(data)
        conn.remember()
        status, data = conn.post("/api/chat", json.dumps(GOOD_CHAT))
        assert status == 200, data
        assert data["done"] is True
        assert conn.same, "the server closed the keep-alive connection"
    finally:
        conn.close()


def test_surrogates_in_paths_headers_and_queries_are_not_server_errors(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        requests: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/v1/models/smollm2%ED%A0%80", {}),
            ("GET", "/v1/models/%F0%9F%98%80?x=%ED%A0%80", {}),
            ("GET", "/api/tags", {"X-Api-Key": b"\xed\xa0\x80", "X-Request-Id": b"\xed\xa0\x80\xff"}),
            ("DELETE", "/api/delete", {"Content-Type": "application/json"}),
        ]
        sock = None
        for method, target, headers in requests:
            body = json.dumps({"model": "nope\ud7ff"}).encode() if method == "DELETE" else None
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status < 500, (target, response.status)
            sock = sock or conn.sock
            assert conn.sock is sock
    finally:
        conn.close()


def test_a_modelfile_that_is_not_utf8_is_a_clean_cli_error(server: ServerProcess, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_bytes(b'FROM smollm2:135m\nSYSTEM "\xed\xa0\x80"\n')
    done = server.cli("create", "bad-bytes", "-f", str(modelfile), timeout=60)
    assert done.returncode == 1
    assert "not valid UTF-8" in done.stderr and "Traceback" not in done.stderr


# -- nesting ---------------------------------------------------------------------------------------
def nested_schema(levels: int) -> str:
    """A schema `levels` objects deep, as JSON text (json.dumps itself recurses too deeply)."""
    head = '{"type":"object","required":["a"],"properties":{"a":' * (levels - 1)
    return head + '{"type":"string"}' + "}}" * (levels - 1)


def array_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


DEEP = "@deep@"


def with_deep(body: dict[str, Any], deep: str) -> str:
    """`body` as JSON with the JSON text `deep` where the placeholder DEEP stands."""
    return json.dumps(body).replace(json.dumps(DEEP), deep)


def tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "deep", "description": "d", "parameters": parameters}}


def deep_cases(levels: int) -> list[tuple[str, str, Any]]:
    schema = nested_schema(levels)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False,
            "options": {"num_predict": 1}}
    openai = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    response_format = {"type": "json_schema", "json_schema": {"name": "deep", "schema": DEEP}}
    anthropic = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                 "tools": [{"name": "deep", "input_schema": DEEP}]}
    return [
        ("/api/chat", with_deep({**chat, "format": DEEP}, schema), native_error),
        ("/api/chat", with_deep({**chat, "tools": [tool(DEEP)]}, schema), native_error),
        ("/v1/chat/completions", with_deep({**openai, "response_format": response_format}, schema), openai_error),
        ("/v1/chat/completions", with_deep({**openai, "tools": [tool(DEEP)]}, schema), openai_error),
        ("/v1/messages", with_deep(anthropic, schema), anthropic_error),
    ]


@pytest.mark.parametrize("levels", [300, 5000])
def test_deeply_nested_schemas_and_tools_are_400s_naming_the_limit(server: ServerProcess, levels: int) -> None:
    conn = Connection(server)
    try:
        for path, body, shape in deep_cases(levels):
            status, data = conn.post(path, body)
            assert status == 400, (path, data)
            assert "nested deeper than 128 levels" in shape(data), (path, data)
        conn.remember()
        status, data = conn.post("/api/chat", json.dumps(GOOD_CHAT))
        assert status == 200 and conn.same, data
    finally:
        conn.close()


def test_a_format_schema_deeper_than_the_converter_allows_is_a_400_naming_its_limit(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False,
            "format": array_schema(100), "options": {"num_predict": 1}}
    r = http.post("/api/chat", json=body)
    assert r.status_code == 400, r.text
    assert "JSON schema is nested too deeply (limit 64 levels)" in r.json()["error"]
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": array_schema(100)}}})
    assert r.status_code == 400 and "limit 64 levels" in r.json()["error"]["message"], r.text


TOOLS_TEMPLATE = ("{{ if .Tools }}<|im_start|>system\nTools: {{ .Tools }}<|im_end|>\n{{ end }}{{ range .Messages }}"
                  "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")


def test_deep_but_allowed_tools_render_and_run(server: ServerProcess) -> None:
    """Just under the body limit, tool schemas go through the Go template (Go values printed as
    JSON) and the forced-tool grammar without a recursion error."""
    conn = Connection(server)
    try:
        create = {"model": "smollm2-tools", "from": MODEL, "stream": False, "template": TOOLS_TEMPLATE}
        status, data = conn.post("/api/create", json.dumps(create))
        assert status == 200, data
        body = with_deep({"model": "smollm2-tools", "messages": [{"role": "user", "content": "x"}], "stream": False,
                          "tool_choice": "required", "options": {"num_predict": 4}, "tools": [tool(DEEP)]},
                         nested_schema(60))
        status, data = conn.post("/api/chat", body)
        assert status == 200, data
        assert data["done"] is True
    finally:
        conn.close()


# -- truncation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [3000, 10_000])
def test_long_conversations_are_truncated_in_seconds(http: httpx.Client, count: int) -> None:
    """Truncation was quadratic (3000 messages: 38 s; 10,000: minutes). The time outside the engine
    (prompt evaluation on a loaded 2-core machine can itself take long) must stay small; the same
    turns in both sizes keep the same suffix, so the second request reuses the cached prefix."""
    messages = [{"role": "system", "content": "You are terse."}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": "a short note"} for i in range(count)]
    messages.append({"role": "user", "content": "Say hi."})
    started = time.monotonic()
    r = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                     "options": {"num_predict": 1, "temperature": 0}}, timeout=600)
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["done"] is True
    assert 1500 < data["prompt_eval_count"] < 2048, data  # filled close to num_ctx, nothing left for the runner to cut
    engine = (data["prompt_eval_duration"] + data["eval_duration"] + data["load_duration"]) / 1e9
    assert elapsed - engine < 15, f"{count} messages: {elapsed - engine:.1f}s outside the engine"
