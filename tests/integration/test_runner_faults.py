"""Runner faults found by probing: unloading, bad token ids, large messages, load parameters (integration).

Real runner processes on SmolLM2-135M, and the shared real server for the HTTP cases.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.engine.base import Chunk, GenerateParams, LoadSpec
from corral.engine.llamacpp import LlamaCppEngine, LlamaCppRunner
from corral.engine.llamacpp.batch import UNLOADED
from corral.errors import BadRequestError, CorralError, PayloadTooLargeError
from corral.schemas.options import LoadOptions, SampleOptions
from tests.support import Loop, ServerProcess, chat, smollm2_path

pytestmark = pytest.mark.integration
MODEL = smollm2_path()
NUM_CTX = 512
BAD_IDS = [[999999], [-1], [2**40], [1, 2, 49152]]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LlamaCppEngine:
    return LlamaCppEngine(log_dir=tmp_path_factory.mktemp("logs"), load_timeout=120)


def spec(**opts: Any) -> LoadSpec:
    return LoadSpec(model_path=MODEL, options=LoadOptions(num_ctx=NUM_CTX, num_thread=2, **opts), num_parallel=2)


@pytest.fixture(scope="module")
def runner(aloop: Loop, engine: LlamaCppEngine) -> Iterator[LlamaCppRunner]:
    r = aloop.run(engine.load(spec()))
    yield r
    aloop.run(r.close())


def long_params(n: int = 400) -> GenerateParams:
    return GenerateParams(prompt=chat("Write a long essay about rivers."), options=SampleOptions(num_predict=n))


async def collect(r: LlamaCppRunner, params: GenerateParams) -> list[Chunk]:
    return [c async for c in r.generate(params)]


# --- 1. unloading ------------------------------------------------------------------------------


async def timed_close(r: LlamaCppRunner) -> float:
    """Seconds from the start of close() to the runner process's exit."""
    t0 = time.monotonic()
    exited = asyncio.ensure_future(r.proc.wait())
    closing = asyncio.ensure_future(r.close())
    await exited
    elapsed = time.monotonic() - t0
    await closing
    return elapsed


def test_idle_runner_exits_at_once_on_close(aloop: Loop, engine: LlamaCppEngine) -> None:
    r = aloop.run(engine.load(spec()))
    elapsed = aloop.run(timed_close(r))
    assert r.proc.returncode == 0  # it left by itself: not killed at the close timeout
    assert elapsed < 0.5


def test_close_with_active_streams_ends_them_with_an_error(aloop: Loop, engine: LlamaCppEngine) -> None:
    r = aloop.run(engine.load(spec()))

    async def go() -> tuple[list[BaseException | list[Chunk]], float]:
        gens = [r.generate(long_params(2000)) for _ in range(2)]
        firsts = [await g.__anext__() for g in gens]
        assert all(not c.done for c in firsts)

        async def rest(g: Any) -> list[Chunk]:
            return [c async for c in g]

        tasks = [asyncio.ensure_future(rest(g)) for g in gens]
        elapsed = await timed_close(r)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
        return list(results), elapsed

    results, elapsed = aloop.run(go())
    assert r.proc.returncode == 0
    for res in results:
        assert isinstance(res, CorralError) and res.message == UNLOADED, res
    assert elapsed < 3.0  # at most one decode step after the shutdown; was the 5 s kill timeout


# --- 2. token ids outside the vocabulary --------------------------------------------------------


@pytest.mark.parametrize("tokens", BAD_IDS)
def test_out_of_vocabulary_ids_are_400_and_the_runner_lives(
    aloop: Loop, runner: LlamaCppRunner, tokens: list[int]
) -> None:
    async def go() -> tuple[BaseException | None, list[Chunk]]:
        beside = asyncio.ensure_future(collect(runner, long_params(24)))
        err: BaseException | None = None
        try:
            await runner.detokenize(tokens)
        except CorralError as exc:
            err = exc
        return err, await beside

    err, chunks = aloop.run(go())
    assert isinstance(err, BadRequestError)
    assert err.message.startswith(f"invalid token id {tokens[-1]}: ")
    assert "vocabulary has ids 0 to 49151" in err.message
    assert runner.alive and chunks[-1].done and chunks[-1].done_reason == "length"
    assert aloop.run(runner.detokenize(aloop.run(runner.tokenize("still here")))) == "still here"


def test_non_integer_token_ids_are_400(aloop: Loop, runner: LlamaCppRunner) -> None:
    async def raw() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(runner.socket_path)
        writer.write(json.dumps({"op": "detokenize", "tokens": ["1", 2.5, True]}).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await reader.readline())
        writer.close()
        return dict(reply)

    reply = aloop.run(raw())
    assert reply["error"]["status"] == 400 and "invalid token id '1'" in reply["error"]["message"]
    assert runner.alive


# --- 3. messages larger than 64 KiB ---------------------------------------------------------------


def test_large_requests_are_served(aloop: Loop, runner: LlamaCppRunner) -> None:
    text = "The river runs to the sea. " * 8000  # ~216 KB on one line
    tokens = aloop.run(runner.tokenize(text))
    assert len(tokens) > 40000
    assert aloop.run(runner.detokenize(tokens)) == text  # ~300 KB of ids out, 216 KB of text back
    chunks = aloop.run(collect(runner, GenerateParams(prompt=text, options=SampleOptions(num_predict=4))))
    last = chunks[-1]
    assert last.done and last.metrics is not None and 0 < last.metrics.prompt_eval_count < NUM_CTX


def test_a_line_over_the_limit_is_413_not_a_dead_runner(aloop: Loop, tmp_path: Path) -> None:
    small = LlamaCppEngine(log_dir=tmp_path, load_timeout=120, max_line=64 * 1024)
    r = aloop.run(small.load(spec()))

    async def raw(line: bytes) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(r.socket_path)
        writer.write(line)
        await writer.drain()
        reply = json.loads(await reader.readline())
        writer.close()
        return dict(reply)

    try:
        with pytest.raises(PayloadTooLargeError, match=r"too large for the model runner \(\d+ bytes, limit 65536"):
            aloop.run(r.tokenize("x " * 40000))  # refused before it is sent
        # a client that sends it anyway gets the same answer from the runner, which stays up
        big = json.dumps({"op": "tokenize", "text": "x " * 100000}).encode() + b"\n"
        reply = aloop.run(raw(big))
        assert reply["error"]["status"] == 413 and "limit 65536" in reply["error"]["message"]
        assert r.alive and aloop.run(r.health())
        assert aloop.run(r.tokenize("hello world"))
    finally:
        aloop.run(r.close())


def test_large_prompt_and_long_chat_over_http(server: ServerProcess) -> None:
    opts = {"num_predict": 4, "num_ctx": 256}  # a small window keeps the (truncated) prefills short
    with httpx.Client(base_url=server.url, timeout=300, trust_env=False) as c:
        prompt = "Tell me about rivers and the sea. " * 6000  # ~200 KB
        r = c.post("/api/generate", json={"model": "smollm2:135m", "prompt": prompt, "stream": False, "options": opts})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["done"] and 0 < body["prompt_eval_count"] <= 256

        turns: list[dict[str, str]] = []
        for i in range(120):
            turns.append({"role": "user", "content": f"Question {i}: " + "what about rivers? " * 40})
            turns.append({"role": "assistant", "content": f"Answer {i}: " + "rivers run to the sea. " * 40})
        turns.append({"role": "user", "content": "Say hi."})
        assert len(json.dumps(turns)) > 200_000
        r = c.post("/api/chat", json={"model": "smollm2:135m", "messages": turns, "stream": False, "options": opts})
        assert r.status_code == 200, r.text
        assert r.json()["done"] and r.json()["prompt_eval_count"] <= 256


def test_out_of_vocabulary_context_over_http(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        for ctx in BAD_IDS:
            r = c.post("/api/generate", json={"model": "smollm2:135m", "prompt": "hi", "context": ctx, "stream": False})
            assert r.status_code == 400, r.text
            assert r.json()["error"].startswith(f"invalid token id {ctx[-1]}: ")
        ok = c.post("/api/generate", json={
            "model": "smollm2:135m", "prompt": "hi", "stream": False, "options": {"num_predict": 3},
        })
        assert ok.status_code == 200 and ok.json()["done"]
        good = c.post("/api/generate", json={
            "model": "smollm2:135m", "prompt": "and then?", "context": ok.json()["context"], "stream": False,
            "options": {"num_predict": 3},
        })
        assert good.status_code == 200 and good.json()["prompt_eval_count"] > len(ok.json()["context"])


# --- 4. load parameters reach llama.cpp -------------------------------------------------------------


def maps_model_file(r: LlamaCppRunner) -> bool:
    return str(MODEL.resolve()) in Path(f"/proc/{r.pid}/maps").read_text()


def test_use_mmap_false_reads_the_weights_and_default_maps_them(
    aloop: Loop, engine: LlamaCppEngine, runner: LlamaCppRunner
) -> None:
    assert maps_model_file(runner)  # unset: llama.cpp's default, mmap on a CPU
    r = aloop.run(engine.load(spec(use_mmap=False)))
    try:
        assert not maps_model_file(r)
        chunks = aloop.run(collect(r, GenerateParams(prompt=chat("Hi"), options=SampleOptions(num_predict=3))))
        assert chunks[-1].done
    finally:
        aloop.run(r.close())
