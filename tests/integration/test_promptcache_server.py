"""The prompt cache through a real `corral serve` with one parallel sequence (SmolLM2-135M).

Two conversations alternate on the one slot: each turn of one finds its history in the prompt
cache (`prompt_cache_count`), `/metrics` counts it, and after `corral stop` (the runner goes away)
the disk tier still holds the conversation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
SYSTEM = {"A": "You are a careful travel guide for the mountains of Norway. " * 10,
          "B": "You are a patient chemistry tutor for first-year students. " * 10}


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("corral-cache")
    env = {"CORRAL_NUM_PARALLEL": "1", "CORRAL_CONTEXT_LENGTH": "1024", "CORRAL_KEEP_ALIVE": "10m",
           "CORRAL_CACHE_RAM": "128MiB", "CORRAL_CACHE_DISK": str(home / "kv"), "CORRAL_CACHE_DISK_MAX": "1GiB"}
    with running_server(home, env) as srv, httpx.Client(base_url=srv.url, timeout=300, trust_env=False) as c:
        assert c.post("/api/pull", json={"model": MODEL, "stream": False}).status_code == 200
        yield srv


def turn(c: httpx.Client, messages: list[dict[str, str]], text: str) -> dict[str, Any]:
    messages.append({"role": "user", "content": text})
    r = c.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                  "options": {"num_predict": 12, "temperature": 0}})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    messages.append(body["message"])
    return body


def metric(text: str, name: str) -> float:
    found = re.findall(rf"^{name}\{{[^}}]*model=\"{re.escape(MODEL)}\"[^}}]*\}} (\S+)$", text, re.M)
    return sum(float(v) for v in found)


def test_conversations_sharing_one_slot_restore_their_history(one_slot: ServerProcess) -> None:
    with httpx.Client(base_url=one_slot.url, timeout=300, trust_env=False) as c:
        a = [{"role": "system", "content": SYSTEM["A"]}]
        b = [{"role": "system", "content": SYSTEM["B"]}]
        first = turn(c, a, "Which fjord should I visit?")
        turn(c, b, "What is a mole?")  # B takes the slot: A's state goes to the cache
        second = turn(c, a, "And after that?")
        assert second["prompt_cache_count"] >= first["prompt_eval_count"] - 1
        assert second["prompt_eval_count"] - second["prompt_cache_count"] < 40  # only the new turn
        turn(c, b, "And a molecule?")
        scrape = c.get("/metrics").text
    assert metric(scrape, "corral_prompt_cache_hits_total") >= 2
    assert metric(scrape, "corral_prompt_cache_saved_tokens_total") >= second["prompt_cache_count"]
    assert metric(scrape, "corral_prompt_cache_entries") >= 1
    assert metric(scrape, "corral_prompt_cache_bytes") > 0


def test_disk_tier_outlives_corral_stop(one_slot: ServerProcess) -> None:
    with httpx.Client(base_url=one_slot.url, timeout=300, trust_env=False) as c:
        a = [{"role": "system", "content": SYSTEM["A"] + "Be brief."}]
        first = turn(c, a, "Name a mountain.")
        stop = one_slot.cli("stop", MODEL)
        assert stop.returncode == 0, stop.stderr
        assert c.get("/api/ps").json()["models"] == []
        again = turn(c, a, "How high is it?")  # a new runner: the history comes from disk
    assert again["prompt_cache_count"] >= first["prompt_eval_count"] - 1
    assert list((one_slot.home / "kv").rglob("*.kv"))
