"""/v1/completions, /v1/embeddings, /v1/models in-process over the scripted engine (spec §1),
checked on the wire and through the official SDK's types and exceptions."""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.appenv import Env, make_model, run, sdk, sse_data


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_completions_shapes_and_suffix(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 2})
            s = await c.post("/v1/completions", json={"model": "tiny", "prompt": "Once", "stream": True,
                                                      "stream_options": {"include_usage": True}})
        body = r.json()
        assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
        assert body["choices"] == [{"text": "Hello world", "index": 0, "finish_reason": "length", "logprobs": None}]
        assert body["usage"]["completion_tokens"] == 2
        data = sse_data(s.text)
        assert data[-1] == "[DONE]" and data[-2]["choices"] == [] and data[-2]["usage"]["completion_tokens"] == 3
        assert "".join(d["choices"][0]["text"] for d in data[:-2]) == "Hello world!"
        assert data[-3]["choices"][0]["finish_reason"] == "stop"
    run(main())


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "tiny", "prompt": "x", "echo": True}, "'echo' is not supported"),
    ({"model": "tiny", "prompt": ["a", "b"]}, "invalid type for 'prompt' field"),
    ({"model": "tiny", "prompt": "x", "suffix": "y"}, '"tiny" does not support insert'),
])
def test_completion_errors(env: Env, body: dict[str, Any], message: str) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/completions", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith(message)
        assert r.json()["error"]["type"] == "invalid_request_error"
    run(main())


def test_embeddings_float_base64_dimensions(env: Env) -> None:
    async def main() -> None:
        client = sdk(env)
        floats = await client.embeddings.create(model="tiny", input=["ab", "abcd"])
        assert [d.index for d in floats.data] == [0, 1]
        vec = floats.data[0].embedding
        assert math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-6) and len(vec) == 3
        async with env.client() as c:
            r = await c.post("/v1/embeddings", json={"model": "tiny", "input": "ab", "encoding_format": "base64",
                                                     "dimensions": 2})
        raw = base64.b64decode(r.json()["data"][0]["embedding"])
        decoded = struct.unpack("<2f", raw)
        assert math.isclose(decoded[0] ** 2 + decoded[1] ** 2, 1.0, rel_tol=1e-6)
        assert r.json()["object"] == "list" and r.json()["usage"]["prompt_tokens"] == 1
        # asked for base64 explicitly, the SDK hands back the little-endian float32 string as is
        b64 = await client.embeddings.create(model="tiny", input="ab", encoding_format="base64")
        raw_vec = base64.b64decode(str(b64.data[0].embedding))
        assert list(struct.unpack("<3f", raw_vec)) == pytest.approx(vec, rel=1e-6)
        await client.close()
    run(main())


def test_embeddings_bad_encoding(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "int8"})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == ("Invalid value for 'encoding_format' = int8. "
                                                "Supported values: ['float', 'base64'].")
    run(main())


def test_models_list_and_retrieve(env: Env, tmp_path: Path) -> None:
    make_model(env.store, tmp_path, "someone/other:v1")

    async def main() -> None:
        client = sdk(env)
        models = [m async for m in client.models.list()]
        owners = {m.id: m.owned_by for m in models}
        assert owners == {"tiny:latest": "library", "someone/other:v1": "someone"}
        one = await client.models.retrieve("someone/other:v1")
        assert one.id == "someone/other:v1" and one.object == "model" and one.created > 0
        with pytest.raises(openai.NotFoundError) as exc:
            await client.models.retrieve("missing")
        assert exc.value.status_code == 404
        assert exc.value.body == {"message": "model 'missing' not found", "type": "not_found_error",
                                  "param": None, "code": None}
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="tiny", messages=[])
        await client.close()
    run(main())


def test_error_after_first_byte_is_an_sse_error_frame() -> None:
    from corral.errors import CorralError, ServerBusyError
    from corral.server.compat.openai_stream import sse_response
    from corral.server.errors import openai_stream_error
    from corral.server.framing import sse_data as frame

    async def frames() -> Any:
        yield frame({"ok": 1})
        raise ServerBusyError()

    async def empty_then_error() -> Any:
        raise CorralError("boom", status=400)
        yield b""  # pragma: no cover

    async def main() -> None:
        resp = await sse_response(frames(), openai_stream_error)
        body = b"".join([chunk async for chunk in resp.body_iterator])  # type: ignore[misc]
        data = sse_data(body.decode())
        assert data[0] == {"ok": 1}
        assert data[1]["error"]["type"] == "api_error" and data[1]["error"]["message"].startswith("server busy")
        with pytest.raises(CorralError):  # before the first byte: raised, so the route answers with a status
            await sse_response(empty_then_error(), openai_stream_error)
    run(main())


def test_developer_role_and_extra_options(env: Env) -> None:
    async def main() -> None:
        async with env.client() as c:
            r = await c.post("/v1/chat/completions", json={
                "model": "tiny", "options": {"num_predict": 1},
                "messages": [{"role": "developer", "content": "Dev."}, {"role": "user", "content": "q"}]})
        assert r.json()["choices"][0]["message"]["content"] == "Hello"
        assert env.prompts == ["[Dev.] q"]
    run(main())
