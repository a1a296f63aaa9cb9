"""Prometheus metrics: the `ServerMetrics` object and the `/metrics` route.

Each app has its own `CollectorRegistry` (never the global one), so several apps in one process
(tests) do not collide. Request counts and latency are observed by the security middleware;
generation metrics by the inference routes through `AppContext.record_generation`; scheduler state (queue
depth and bound, loaded models, their memory per model and per device: a runner may report
`memory_by_device`, else its memory counts as `cpu`) is read at scrape time.
`deploy/grafana/corral.json` and `deploy/prometheus/alerts.yml` are built on these names (a test
checks that every metric and label they use exists). Does not own the scheduler or auth.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from corral.scheduler import Scheduler

# The API key id of the request being served (set by the security middleware).
current_key_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("corral_key_id", default=None)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """All corral metrics; one per app (`Services.metrics`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        model = ["model"]

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> Gauge:
            return Gauge(name, doc, labels or [], registry=r)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.requests = counter("corral_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"])
        self.latency = histogram("corral_http_request_duration_seconds", "HTTP request latency",
                                 ["route"], _LATENCY_BUCKETS)
        self.ttft = histogram("corral_time_to_first_token_seconds", "Time from request to first token", model,
                              _TTFT_BUCKETS)
        self.prompt_tokens = counter("corral_prompt_tokens", "Prompt tokens evaluated", model)
        self.cache_tokens = counter("corral_prompt_cache_hit_tokens", "Prompt tokens from the prefix cache",
                                    model)
        self.generated_tokens = counter("corral_generated_tokens", "Tokens generated", model)
        self.tokens_per_second = gauge("corral_generation_tokens_per_second", "Decode speed", model)
        self.load_duration = histogram("corral_model_load_duration_seconds", "Model load time", model,
                                       _LOAD_BUCKETS)
        self.runner_restarts = counter("corral_runner_restarts", "Runners that stopped unexpectedly", model)
        self.queue_depth = gauge("corral_queue_depth", "Requests waiting for or holding a runner")
        self.queue_capacity = gauge("corral_queue_capacity", "Bound on waiting requests (CORRAL_MAX_QUEUE)")
        self.loaded_models = gauge("corral_loaded_models", "Models currently loaded")
        self.model_memory = gauge("corral_loaded_model_memory_bytes", "Memory of each loaded model", model)
        self.device_memory = gauge("corral_device_memory_bytes", "Memory of the loaded models on each device",
                                   ["device"])
        self.rate_limited = counter("corral_rate_limited_requests", "Requests refused with 429", ["limit"])
        self.cache_entries = gauge("corral_prompt_cache_entries", "KV states in each model's prompt cache "
                                   "(tier: ram or disk)", ["model", "tier"])
        self.cache_bytes = gauge("corral_prompt_cache_bytes", "Bytes of each model's prompt cache (tier: ram or disk)",
                                 ["model", "tier"])
        self.cache_hits = counter("corral_prompt_cache_hits", "Prompts that restored a state from the prompt cache",
                                  model)
        self.cache_saved = counter("corral_prompt_cache_saved_tokens",
                                   "Prompt tokens restored from the prompt cache instead of computed", model)
        self._cache_seen: dict[tuple[str, int], tuple[int, int]] = {}
        for limit in ("requests", "tokens"):  # series from 0, so rate() sees the first refusal
            self.rate_limited.labels(limit=limit)

    # called by the middleware ----------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    # called by the inference routes ----------------------------------------------------------
    def observe_generation(self, model: str, *, ttft_s: float | None, prompt_tokens: int, cache_tokens: int,
                           eval_tokens: int, eval_duration_s: float, load_s: float) -> None:
        if ttft_s is not None and ttft_s >= 0:
            self.ttft.labels(model=model).observe(ttft_s)
        self.prompt_tokens.labels(model=model).inc(max(0, prompt_tokens))
        self.cache_tokens.labels(model=model).inc(max(0, cache_tokens))
        self.generated_tokens.labels(model=model).inc(max(0, eval_tokens))
        if eval_duration_s > 0 and eval_tokens > 0:
            self.tokens_per_second.labels(model=model).set(eval_tokens / eval_duration_s)
        if load_s > 0:
            self.load_duration.labels(model=model).observe(load_s)

    def count_runner_restart(self, model: str) -> None:
        self.runner_restarts.labels(model=model).inc()

    # scrape ----------------------------------------------------------------------------------
    def refresh_scheduler(self, scheduler: Any) -> None:
        """Copy queue depth and loaded models from the scheduler (duck-typed: pending, snapshot())."""
        if scheduler is None:
            return
        self.queue_depth.set(int(getattr(scheduler, "pending", 0)))
        capacity = getattr(getattr(scheduler, "settings", None), "max_queue", None)
        if isinstance(capacity, int):
            self.queue_capacity.set(capacity)
        entries = list(scheduler.snapshot())
        self.loaded_models.set(len(entries))
        self.model_memory.clear()
        self.device_memory.clear()
        per_device: dict[str, int] = {"cpu": 0}
        for entry in entries:
            try:
                memory = int(entry.runner.memory_bytes)
                split = dict(getattr(entry.runner, "memory_by_device", None) or {"cpu": memory})
            except Exception:  # a dying runner must not break the scrape
                memory, split = 0, {}
            self.model_memory.labels(model=entry.ref.name).set(memory)
            self.runner_restarts.labels(model=entry.ref.name)  # a 0 series, so increase() sees the first
            for device, size in split.items():
                per_device[str(device)] = per_device.get(str(device), 0) + int(size)
        for device, size in per_device.items():
            self.device_memory.labels(device=device).set(size)

    async def refresh_prompt_caches(self, scheduler: Any, timeout: float = 2.0) -> None:
        """Read each loaded runner's prompt-cache figures (duck-typed: an async `status()` whose answer
        has a `prompt_cache` object). Hits and saved tokens are runner totals, added as deltas."""
        entries = list(scheduler.snapshot()) if scheduler is not None else []
        self.cache_entries.clear()
        self.cache_bytes.clear()

        async def one(entry: Any) -> tuple[str, int, dict[str, Any]]:
            status = getattr(entry.runner, "status", None)
            if status is None or not getattr(entry.runner, "alive", False):
                return entry.ref.name, 0, {}
            got = await asyncio.wait_for(status(), timeout)
            return entry.ref.name, int(getattr(entry.runner, "pid", 0)), dict(got.get("prompt_cache") or {})

        results = await asyncio.gather(*(one(e) for e in entries), return_exceptions=True)
        seen = self._cache_seen
        self._cache_seen = {}  # runners gone since the last scrape are forgotten
        for res in results:
            if isinstance(res, BaseException) or not res[2]:
                continue  # a runner that is busy dying, or without a prompt cache
            self._observe_cache(*res, seen.get((res[0], res[1]), (0, 0)))

    def _observe_cache(self, model: str, pid: int, pc: dict[str, Any], last: tuple[int, int] = (0, 0)) -> None:
        disk = pc.get("disk") or {}
        self.cache_entries.labels(model=model, tier="ram").set(int(pc.get("entries", 0)))
        self.cache_bytes.labels(model=model, tier="ram").set(int(pc.get("bytes", 0)))
        if disk:
            self.cache_entries.labels(model=model, tier="disk").set(int(disk.get("entries", 0)))
            self.cache_bytes.labels(model=model, tier="disk").set(int(disk.get("bytes", 0)))
        hits, saved = int(pc.get("hits", 0)), int(pc.get("tokens_saved", 0))
        last_hits, last_saved = last
        self.cache_hits.labels(model=model).inc(max(hits - last_hits, 0))
        self.cache_saved.labels(model=model).inc(max(saved - last_saved, 0))
        self._cache_seen[(model, pid)] = (hits, saved)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def install_metrics_route(app: FastAPI, metrics: ServerMetrics, scheduler: Scheduler | None) -> None:
    async def metrics_endpoint(request: Request) -> Response:
        metrics.refresh_scheduler(scheduler)
        await metrics.refresh_prompt_caches(scheduler)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
