"""deploy/: the Grafana dashboard and the Prometheus alert rules are well formed and use only
metrics and labels corral exports (checked here in-process over the scripted engine; the
integration test checks the same against a real server)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.appenv import Env
from tests.monitoring import ALERTS, DASHBOARD, alert_exprs, alert_rules, dashboard_exprs, parse_expr, problems
from tests.support import ROOT


@pytest.fixture(scope="module")
def metrics_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    env = Env(tmp_path_factory.mktemp("deploy"))

    async def main() -> str:
        async with env.client() as c:
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
            assert r.status_code == 200, r.text
            assert (await c.post("/api/show", json={"model": "missing"})).status_code == 404
            # The scripted engine reports no timings; record one generation as a real engine would.
            env.app.state.ctx.services.metrics.observe_generation(
                "tiny", ttft_s=0.1, prompt_tokens=3, cache_tokens=1, eval_tokens=5, eval_duration_s=0.5, load_s=0.2)
            return (await c.get("/metrics")).text

    return asyncio.run(main())


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] == "corral"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("route", "time to first token", "latency", "tokens/s", "queue", "memory per device",
                  "loaded models", "cache", "restarts", "rate-limited"):
        assert topic in titles or topic.replace("tokens/s", "decode speed") in titles, topic
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    exprs = " ".join(e.text for e in dashboard_exprs())
    assert "histogram_quantile(0.95" in exprs and "histogram_quantile(0.99" in exprs


def test_alert_rules_parse_and_cover_the_issue() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"CorralRunnerRestarts", "CorralQueueNearBound", "CorralHighErrorRate"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule["alert"]
        grouping = parse_expr(rule["alert"], str(rule["expr"])).grouping
        used = set(re.findall(r"\$labels\.([A-Za-z_]+)", json.dumps(rule["annotations"])))
        assert used <= grouping, f"{rule['alert']}: annotations use {used - grouping}, not kept by the expression"
    example = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert example["rule_files"] == [ALERTS.name]
    assert example["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_every_metric_and_label_used_is_exported(metrics_text: str) -> None:
    assert problems(dashboard_exprs() + alert_exprs(), metrics_text) == []


def test_checker_catches_unknown_names(metrics_text: str) -> None:
    bad = [parse_expr("x", 'sum by (flavour) (rate(corral_http_requests_total{colour="red"}[5m]))'),
           parse_expr("y", "corral_not_a_metric")]
    found = problems(bad, metrics_text)
    assert any("colour" in p for p in found) and any("flavour" in p for p in found)
    assert any("corral_not_a_metric" in p for p in found)


def test_new_metrics_have_series_from_the_start(metrics_text: str) -> None:
    assert 'corral_rate_limited_requests_total{limit="requests"} 0.0' in metrics_text
    assert 'corral_rate_limited_requests_total{limit="tokens"} 0.0' in metrics_text
    assert "corral_queue_capacity 512.0" in metrics_text
    assert 'corral_device_memory_bytes{device="cpu"} 1000.0' in metrics_text  # the scripted runner's memory
    assert 'corral_runner_restarts_total{model="tiny:latest"} 0.0' in metrics_text or \
        'corral_runner_restarts_total{model="tiny"} 0.0' in metrics_text


def test_paths_exist() -> None:
    assert Path(DASHBOARD).is_file() and Path(ALERTS).is_file()
