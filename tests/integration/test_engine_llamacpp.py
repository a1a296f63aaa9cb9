"""The llama.cpp engine end to end: real runner processes on SmolLM2-135M (integration)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from corral.engine.base import Chunk, GenerateParams, LoadSpec
from corral.engine.llamacpp import LlamaCppEngine, LlamaCppRunner
from corral.engine.llamacpp.slots import PROMPT_TOO_LONG
from corral.errors import BadRequestError, CorralError, RunnerStoppedError
from corral.schemas.options import LoadOptions, SampleOptions
from tests.support import Loop, chat, smollm2_path

pytestmark = pytest.mark.integration
MODEL = smollm2_path()
NUM_CTX = 512


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LlamaCppEngine:
    return LlamaCppEngine(log_dir=tmp_path_factory.mktemp("logs"), load_timeout=60)


@pytest.fixture(scope="module")
def runner(aloop: Loop, engine: LlamaCppEngine) -> Iterator[LlamaCppRunner]:
    spec = LoadSpec(model_path=MODEL, options=LoadOptions(num_ctx=NUM_CTX, num_thread=2), num_parallel=8)
    r = aloop.run(engine.load(spec))
    yield r
    aloop.run(r.close())


async def collect(r: LlamaCppRunner, prompt: str, **opts: Any) -> tuple[str, Chunk]:
    params = GenerateParams(prompt=prompt, options=SampleOptions(**opts))
    text = []
    async for c in r.generate(params):
        text.append(c.text)
        if c.done:
            return "".join(text), c
    raise AssertionError("stream ended without a done chunk")


def test_stream_text_done_reason_and_metrics(aloop: Loop, runner: LlamaCppRunner) -> None:
    async def go() -> tuple[list[Chunk], int]:
        chunks = [
            c
            async for c in runner.generate(
                GenerateParams(
                    prompt=chat("Write a long essay about the history of Rome."),
                    options=SampleOptions(temperature=0, num_predict=12),
                )
            )
        ]
        return chunks, len(await runner.tokenize(chat("Write a long essay about the history of Rome.")))

    chunks, n_prompt = aloop.run(go())
    last = chunks[-1]
    assert last.done and last.done_reason == "length" and last.metrics is not None
    assert sum(1 for c in chunks if c.text) >= 3
    assert "".join(c.text for c in chunks).strip()
    m = last.metrics
    assert m.eval_count == 12
    assert m.prompt_eval_count == n_prompt  # chat markup tokens are special, no BOS for SmolLM2
    assert m.prompt_eval_duration > 0 and m.eval_duration > 0
    assert len(m.context) == n_prompt + 12


def test_temperature_zero_is_deterministic(aloop: Loop, runner: LlamaCppRunner) -> None:
    a, _ = aloop.run(collect(runner, chat("What is the capital of France?"), temperature=0, num_predict=24))
    b, _ = aloop.run(collect(runner, chat("What is the capital of France?"), temperature=0, num_predict=24))
    assert a == b and a


def test_seed_alone_equals_seed_beside_seven_others(aloop: Loop, runner: LlamaCppRunner) -> None:
    target = chat("Write one sentence about autumn leaves.")
    opts = {"temperature": 0.8, "seed": 1234, "num_predict": 32}
    alone, _ = aloop.run(collect(runner, target, **opts))
    again, _ = aloop.run(collect(runner, target, **opts))
    assert alone == again

    async def crowd() -> list[tuple[str, Chunk]]:
        others = [
            collect(runner, chat(f"Count to {i} in words."), temperature=0.8, seed=i, num_predict=32) for i in range(7)
        ]
        return list(await asyncio.gather(collect(runner, target, **opts), *others))

    results = aloop.run(crowd())
    assert results[0][0] == alone
    other_seed, _ = aloop.run(collect(runner, target, temperature=0.8, seed=99, num_predict=32))
    assert other_seed != alone


def test_stop_string_cuts_output(aloop: Loop, runner: LlamaCppRunner) -> None:
    prompt = chat("Explain what a computer is in two sentences.")
    full, _ = aloop.run(collect(runner, prompt, temperature=0, num_predict=40))
    words = full.split()
    assert len(words) > 6
    stop = words[4]
    cut, last = aloop.run(collect(runner, prompt, temperature=0, num_predict=40, stop=(stop,)))
    assert last.done_reason == "stop"
    assert cut == full[: full.index(stop)]
    assert stop not in cut


def test_num_predict_length(aloop: Loop, runner: LlamaCppRunner) -> None:
    _, last = aloop.run(collect(runner, chat("Tell me a long story."), temperature=0, num_predict=5))
    assert last.done_reason == "length" and last.metrics is not None and last.metrics.eval_count == 5


def test_prefix_reuse_across_requests(aloop: Loop, runner: LlamaCppRunner) -> None:
    system = "You are a meticulous librarian. " * 25
    _, first = aloop.run(collect(runner, chat("Recommend a book.", system), temperature=0, num_predict=2))
    _, second = aloop.run(collect(runner, chat("Recommend a film.", system), temperature=0, num_predict=2))
    _, third = aloop.run(collect(runner, chat("Recommend a song.", system), temperature=0, num_predict=2))
    assert first.metrics is not None and second.metrics is not None and third.metrics is not None
    assert first.metrics.prompt_cache_count < 10
    assert second.metrics.prompt_cache_count > 150
    assert second.metrics.prompt_eval_count == first.metrics.prompt_eval_count
    # the machine is noisy (CPU steal): the better of two cached runs must beat the uncached one
    reused = min(second.metrics.prompt_eval_duration, third.metrics.prompt_eval_duration)
    assert reused < first.metrics.prompt_eval_duration


def test_concurrent_requests_share_a_system_prompt(aloop: Loop, runner: LlamaCppRunner) -> None:
    system = "You answer every question about astronomy with care and precision. " * 12

    async def go() -> tuple[Chunk, tuple[str, Chunk], dict[str, Any]]:
        gen_a = runner.generate(
            GenerateParams(prompt=chat("What is a star?", system), options=SampleOptions(temperature=0, num_predict=60))
        )
        await gen_a.__anext__()  # A's prompt (with the system prompt) is now in its slot
        task_b = asyncio.ensure_future(collect(runner, chat("What is a comet?", system), temperature=0, num_predict=4))
        status: dict[str, Any] = {}
        while not task_b.done():
            status = await runner.status()
            await asyncio.sleep(0.01)
        last_a = None
        async for c in gen_a:
            last_a = c
        assert last_a is not None
        return last_a, await task_b, status

    alone_b, _ = aloop.run(collect(runner, chat("What is a comet?", system), temperature=0, num_predict=4))
    a, (text_b, b), _ = aloop.run(go())
    assert text_b == alone_b  # the copied prefix gives the same continuation
    assert a.metrics is not None and b.metrics is not None
    assert b.metrics.prompt_cache_count > 100
    # A took over the only slot holding the system prompt (B's first run), so B's cached prefix
    # can only have been copied from A's busy slot
    assert a.metrics.prompt_cache_count > 100


def test_cancellation_frees_the_sequence(aloop: Loop, runner: LlamaCppRunner) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any], float]:
        gen = cast(
            AsyncGenerator[Chunk, None],
            runner.generate(
                GenerateParams(
                    prompt=chat("Write an essay about rivers."),
                    options=SampleOptions(temperature=0, num_predict=400),
                )
            ),
        )
        await gen.__anext__()
        await gen.__anext__()
        during = await runner.status()
        await gen.aclose()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            after = await runner.status()
            if after["active"] == 0:
                return during, after, time.monotonic() - t0
            await asyncio.sleep(0.02)
        raise AssertionError("sequence not released")

    during, after, waited = aloop.run(go())
    assert during["active"] == 1
    assert after["active"] == 0 and not any(s["busy"] for s in after["slots"])
    assert waited < 1.0


def test_a_stopped_request_keeps_its_kv_for_the_regenerate(aloop: Loop, runner: LlamaCppRunner) -> None:
    """Issue 13: Open WebUI's stop-then-regenerate prefills only the prompt's last token again."""
    prompt = chat("Describe the water cycle in detail.", "You are a patient science teacher. " * 8)

    async def stop_after_three_chunks() -> None:
        params = GenerateParams(prompt=prompt, options=SampleOptions(temperature=0, num_predict=400))
        gen = cast(AsyncGenerator[Chunk, None], runner.generate(params))
        for _ in range(3):
            await gen.__anext__()
        await gen.aclose()
        t0 = time.monotonic()
        while (await runner.status())["active"] and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)

    aloop.run(stop_after_three_chunks())
    text, last = aloop.run(collect(runner, prompt, temperature=0, num_predict=4))
    assert last.metrics is not None and last.metrics.prompt_eval_count > 60 and text
    assert last.metrics.prompt_cache_count == last.metrics.prompt_eval_count - 1


def test_embeddings_shape_and_determinism(aloop: Loop, runner: LlamaCppRunner) -> None:
    a = aloop.run(runner.embed(["the quick brown fox", "hello"]))
    b = aloop.run(runner.embed(["the quick brown fox"]))
    assert len(a.embeddings) == 2 and len(a.embeddings[0]) == 576
    assert a.embeddings[0] == b.embeddings[0]
    assert a.embeddings[0] != a.embeddings[1]
    assert a.prompt_eval_count > b.prompt_eval_count > 0
    with pytest.raises(BadRequestError, match="the input length exceeds the context length"):
        aloop.run(runner.embed(["word " * (NUM_CTX + 50)], truncate=False))
    cut = aloop.run(runner.embed(["word " * (NUM_CTX + 50)], truncate=True))
    assert cut.prompt_eval_count == NUM_CTX


def test_overlong_prompt_without_shift_is_400(aloop: Loop, runner: LlamaCppRunner) -> None:
    params = GenerateParams(
        prompt="apple " * (NUM_CTX + 20), shift=False, options=SampleOptions(temperature=0, num_predict=2)
    )

    async def go() -> None:
        async for _ in runner.generate(params):
            pass

    with pytest.raises(BadRequestError) as e:
        aloop.run(go())
    assert e.value.message == PROMPT_TOO_LONG
    _, last = aloop.run(collect(runner, "apple " * (NUM_CTX + 20), temperature=0, num_predict=2))
    assert last.metrics is not None and last.metrics.prompt_eval_count < NUM_CTX


def test_tokenize_detokenize_round_trip(aloop: Loop, runner: LlamaCppRunner) -> None:
    toks = aloop.run(runner.tokenize("Hello, wörld!"))
    assert toks and all(isinstance(t, int) for t in toks)
    assert aloop.run(runner.detokenize(toks)) == "Hello, wörld!"


def test_killed_child_raises_runner_stopped(aloop: Loop, engine: LlamaCppEngine) -> None:
    spec = LoadSpec(model_path=MODEL, options=LoadOptions(num_ctx=256, num_thread=1))
    r = aloop.run(engine.load(spec))

    async def go() -> None:
        gen = r.generate(
            GenerateParams(prompt=chat("Tell a long tale."), options=SampleOptions(temperature=0, num_predict=200))
        )
        await gen.__anext__()
        os.kill(r.pid, signal.SIGKILL)
        async for _ in gen:
            pass

    try:
        assert r.alive
        with pytest.raises(RunnerStoppedError):
            aloop.run(go(), timeout=30)
        assert not r.alive
    finally:
        aloop.run(r.close())


def test_truncated_gguf_fails_fast_with_clear_error(aloop: Loop, engine: LlamaCppEngine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    with open(MODEL, "rb") as f:
        bad.write_bytes(f.read(1 << 20))
    t0 = time.monotonic()
    with pytest.raises(CorralError) as e:
        aloop.run(engine.load(LoadSpec(model_path=bad, options=LoadOptions(num_ctx=256))), timeout=60)
    assert time.monotonic() - t0 < 30
    assert e.value.message.startswith("llama runner process has terminated: exit status 1")
    assert "error loading model" in e.value.message


def test_grammar_and_logprobs(aloop: Loop, runner: LlamaCppRunner) -> None:
    params = GenerateParams(
        prompt=chat("Is the sky blue? Answer yes or no."),
        options=SampleOptions(temperature=0.8, seed=5, num_predict=10),
        grammar='root ::= ("yes" | "no") "."',
        logprobs=True,
        top_logprobs=3,
    )

    async def go() -> list[Chunk]:
        return [c async for c in runner.generate(params)]

    chunks = aloop.run(go())
    text = "".join(c.text for c in chunks)
    assert text in ("yes.", "no.")
    lps = [lp for c in chunks for lp in c.logprobs]
    assert lps and "".join(lp.token for lp in lps) == text
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        tops = [t.logprob for t in lp.top_logprobs]
        assert tops == sorted(tops, reverse=True) and tops[0] >= lp.logprob


def test_context_shift_during_generation(aloop: Loop, engine: LlamaCppEngine) -> None:
    r = aloop.run(engine.load(LoadSpec(model_path=MODEL, options=LoadOptions(num_ctx=64, num_thread=2))))
    prompt = chat("Count from 1 to 500.")
    try:
        _, shifted = aloop.run(collect(r, prompt, temperature=0, num_predict=90, repeat_penalty=1.1))
        _, cut = aloop.run(collect_noshift(r, prompt))
    finally:
        aloop.run(r.close())
    assert shifted.metrics is not None and cut.metrics is not None
    n_prompt = cut.metrics.prompt_eval_count
    # without shift, generation ends when the window is full (the last sampled token is not decoded)
    assert cut.done_reason == "length" and cut.metrics.eval_count == 64 - n_prompt + 1
    assert shifted.metrics.eval_count > 64 - n_prompt + 1  # kept generating past the window
    assert len(shifted.metrics.context) <= 65


async def collect_noshift(r: LlamaCppRunner, prompt: str) -> tuple[str, Chunk]:
    params = GenerateParams(
        prompt=prompt, shift=False, options=SampleOptions(temperature=0, num_predict=90, repeat_penalty=1.1)
    )
    text = []
    async for c in r.generate(params):
        text.append(c.text)
        if c.done:
            return "".join(text), c
    raise AssertionError("stream ended without a done chunk")
