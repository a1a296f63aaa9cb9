"""Prompt-cache figures in /metrics (read from runner status at scrape time) and in the scheduler's
memory estimate."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from corral.engine.base import LoadSpec
from corral.engine.llamacpp import LlamaCppEngine
from corral.server.ops.metrics import ServerMetrics
from tests.support import smollm2_path


@dataclasses.dataclass
class Runner:
    pid: int
    cache: dict[str, Any]
    alive: bool = True

    async def status(self) -> dict[str, Any]:
        return {"slots": [], "prompt_cache": self.cache}


@dataclasses.dataclass
class Ref:
    name: str


@dataclasses.dataclass
class Entry:
    ref: Ref
    runner: Any


class Scheduler:
    def __init__(self, *entries: Entry) -> None:
        self.entries = list(entries)

    def snapshot(self) -> list[Entry]:
        return self.entries


def value(m: ServerMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def scrape(m: ServerMetrics, sched: Scheduler) -> None:
    asyncio.run(m.refresh_prompt_caches(sched))


def test_cache_figures_per_model_and_tier() -> None:
    m = ServerMetrics()
    cache = {"entries": 3, "bytes": 3000, "hits": 5, "tokens_saved": 900,
             "disk": {"entries": 7, "bytes": 9000}}
    scrape(m, Scheduler(Entry(Ref("a"), Runner(11, cache)), Entry(Ref("emb"), Runner(12, {}))))
    assert value(m, "corral_prompt_cache_entries", model="a", tier="ram") == 3
    assert value(m, "corral_prompt_cache_bytes", model="a", tier="disk") == 9000
    assert value(m, "corral_prompt_cache_hits_total", model="a") == 5
    assert value(m, "corral_prompt_cache_saved_tokens_total", model="a") == 900
    assert value(m, "corral_prompt_cache_entries", model="emb", tier="ram") is None  # no cache there


def test_runner_totals_become_counter_increments_across_restarts() -> None:
    m = ServerMetrics()
    runner = Runner(11, {"entries": 1, "bytes": 10, "hits": 2, "tokens_saved": 100})
    sched = Scheduler(Entry(Ref("a"), runner))
    scrape(m, sched)
    runner.cache = {**runner.cache, "hits": 3, "tokens_saved": 150}
    scrape(m, sched)
    assert value(m, "corral_prompt_cache_hits_total", model="a") == 3
    sched.entries = [Entry(Ref("a"), Runner(12, {"entries": 0, "bytes": 0, "hits": 1, "tokens_saved": 40}))]
    scrape(m, sched)  # a new runner process counts from zero: its totals are added whole
    assert value(m, "corral_prompt_cache_hits_total", model="a") == 4
    assert value(m, "corral_prompt_cache_saved_tokens_total", model="a") == 190
    sched.entries = []
    scrape(m, sched)  # unloaded: the gauges go, the counters stay
    assert value(m, "corral_prompt_cache_entries", model="a", tier="ram") is None
    assert value(m, "corral_prompt_cache_hits_total", model="a") == 4


def test_a_runner_that_does_not_answer_does_not_break_the_scrape() -> None:
    class Stuck(Runner):
        async def status(self) -> dict[str, Any]:
            await asyncio.sleep(10)
            return {}

    m = ServerMetrics()
    sched = Scheduler(Entry(Ref("slow"), Stuck(1, {})), Entry(Ref("a"), Runner(2, {"entries": 2, "bytes": 5})))
    asyncio.run(m.refresh_prompt_caches(sched, timeout=0.05))
    assert value(m, "corral_prompt_cache_entries", model="a", tier="ram") == 2


def test_the_memory_estimate_counts_the_cache_bound(tmp_path: Any) -> None:
    spec = LoadSpec(model_path=smollm2_path(), num_parallel=4)
    plain = LlamaCppEngine(log_dir=tmp_path)
    cached = LlamaCppEngine(log_dir=tmp_path, cache_ram=512 << 20)
    assert cached.estimate(spec) - plain.estimate(spec) == 512 << 20
    embed = dataclasses.replace(spec, embedding=True)
    assert cached.estimate(embed) == plain.estimate(embed)  # embedding runners have no prompt cache


def test_cache_settings_from_the_environment() -> None:
    import psutil
    import pytest
    from pydantic import ValidationError

    from corral.config import Settings, parse_size

    assert [parse_size(v) for v in ("0", "1024", "4GiB", "512MiB", "1.5G", "10gb", "2 KiB")] == [
        0, 1024, 4 << 30, 512 << 20, int(1.5 * (1 << 30)), 10 << 30, 2048]
    default = Settings.from_env({})
    assert default.cache_ram_bytes == min(psutil.virtual_memory().total // 10, 8 << 30)
    assert default.cache_disk is None and default.cache_disk_max_bytes == 10 << 30
    s = Settings.from_env({"CORRAL_CACHE_RAM": "0", "CORRAL_CACHE_DISK": "~/kv", "CORRAL_CACHE_DISK_MAX": "2G"})
    assert s.cache_ram_bytes == 0 and s.cache_disk is not None and "~" not in str(s.cache_disk)
    assert s.cache_disk_max_bytes == 2 << 30
    for bad in ("lots", "-1", "4XB"):
        with pytest.raises(ValidationError):
            Settings.from_env({"CORRAL_CACHE_RAM": bad})
