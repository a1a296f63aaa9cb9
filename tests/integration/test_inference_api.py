"""Native inference against the shared real server (SmolLM2 through a real runner process)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"


def generate(http: httpx.Client, prompt: str, **options: Any) -> dict[str, Any]:
    r = http.post("/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False,
                                         "options": {"num_predict": 24, **options}})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_generate_stream_and_final_metrics(http: httpx.Client) -> None:
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Count to five.",
                                                    "options": {"num_predict": 16, "temperature": 0}}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        chunks = [json.loads(line) for line in r.iter_lines() if line]
    final = chunks[-1]
    assert final["done"] and final["done_reason"] in ("stop", "length")
    text_chunks = sum(1 for c in chunks[:-1] if c["response"])
    assert 0 < text_chunks <= final["eval_count"] <= 16  # a token may carry no text (EOG, partial UTF-8)
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0
    assert final["eval_count"] <= 16
    assert len(final["context"]) >= final["prompt_eval_count"]
    assert "".join(c["response"] for c in chunks).strip()


def test_temperature_zero_and_fixed_seed_are_deterministic(http: httpx.Client) -> None:
    a = generate(http, "Tell me about cats.", temperature=0)
    b = generate(http, "Tell me about cats.", temperature=0)
    assert a["response"] == b["response"]
    c = generate(http, "Tell me about dogs.", temperature=0.9, seed=1234)
    d = generate(http, "Tell me about dogs.", temperature=0.9, seed=1234)
    assert c["response"] == d["response"]


def test_seeded_output_is_the_same_alone_and_batched_beside_others(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Write a haiku about rivers.", "stream": False,
            "options": {"num_predict": 32, "temperature": 0.8, "seed": 42}}

    async def main() -> tuple[str, list[str]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300, trust_env=False) as c:
            alone = (await c.post("/api/generate", json=body)).json()["response"]
            others = [
                c.post("/api/generate", json={**body, "prompt": f"Story number {i} about a fox.",
                                              "options": {"num_predict": 32, "temperature": 0.8, "seed": i}})
                for i in range(7)
            ]
            results = await asyncio.gather(c.post("/api/generate", json=body), *others)
            return alone, [r.json()["response"] for r in results]

    alone, batched = asyncio.run(main())
    assert batched[0] == alone


def test_multi_turn_chat_reuses_the_cached_prefix(http: httpx.Client) -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant. " * 20},
                {"role": "user", "content": "Name a fruit."}]
    first = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                         "options": {"num_predict": 12, "temperature": 0}}).json()
    messages += [first["message"], {"role": "user", "content": "And a vegetable?"}]
    second = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                          "options": {"num_predict": 12, "temperature": 0}}).json()
    assert second["prompt_eval_count"] > first["prompt_eval_count"]
    assert second["prompt_cache_count"] >= first["prompt_eval_count"] - 2
    assert second["prompt_eval_count"] - second["prompt_cache_count"] < 40  # only the new turn is evaluated


def test_concurrent_requests_share_a_common_system_prompt(server: ServerProcess) -> None:
    system = "You are a terse assistant who answers in one short sentence. " * 15

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300, trust_env=False) as c:
            reqs = [c.post("/api/chat", json={"model": MODEL, "stream": False, "options": {"num_predict": 8},
                                              "messages": [{"role": "system", "content": system},
                                                           {"role": "user", "content": f"Question {i}?"}]})
                    for i in range(4)]
            return [r.json() for r in await asyncio.gather(*reqs)]

    results = asyncio.run(main())
    cached = sorted(r["prompt_cache_count"] for r in results)
    assert cached[-1] > 100  # at least the later sequences got the shared prefix from the KV cache


def test_embed_real_model(http: httpx.Client) -> None:
    r = http.post("/api/embed", json={"model": MODEL, "input": ["hello world", "goodbye"]}).json()
    assert len(r["embeddings"]) == 2 and len(r["embeddings"][0]) == 576
    norm = sum(v * v for v in r["embeddings"][0]) ** 0.5
    assert abs(norm - 1) < 1e-3
    again = http.post("/api/embed", json={"model": MODEL, "input": "hello world"}).json()
    assert again["embeddings"][0] == pytest.approx(r["embeddings"][0], abs=1e-5)


def test_over_long_prompt_without_shift_is_400(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "word " * 3000, "raw": True, "shift": False,
                                         "stream": False, "options": {"num_ctx": 512, "num_predict": 4}})
    assert r.status_code == 400
    assert r.json()["error"].startswith("the prompt is longer than the context length")


def test_over_long_prompt_is_truncated_by_default(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "word " * 3000, "raw": True, "stream": False,
                                         "options": {"num_ctx": 512, "num_predict": 4}})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] < 512


def test_ps_lists_the_loaded_model(http: httpx.Client) -> None:
    generate(http, "hi", num_predict=1)
    models = http.get("/api/ps").json()["models"]
    entry = next(m for m in models if m["name"] == MODEL)
    assert entry["size"] > 0 and len(entry["digest"]) == 64 and entry["expires_at"]


def test_keep_alive_expiry_unloads(http: httpx.Client) -> None:
    import time

    http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "keep_alive": "1s",
                                     "options": {"num_predict": 1}})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not any(m["name"] == MODEL for m in http.get("/api/ps").json()["models"]):
            break
        time.sleep(0.25)
    assert not any(m["name"] == MODEL for m in http.get("/api/ps").json()["models"])
    assert generate(http, "hello", num_predict=2)["done"]  # loads again on demand


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_ignore_eos_generates_exactly_num_predict_tokens(http: httpx.Client, temperature: float) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "stream": False,
            "ignore_eos": True, "options": {"num_predict": 80, "temperature": temperature, "seed": 3}}
    r = http.post("/api/chat", json=body).json()
    assert r["eval_count"] == 80 and r["done_reason"] == "length"
    v1 = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 40, "ignore_eos": True,
                                                 "messages": [{"role": "user", "content": "Say hi."}]}).json()
    assert v1["usage"]["completion_tokens"] == 40 and v1["choices"][0]["finish_reason"] == "length"
