"""The Grafana dashboard and Prometheus alert rules in deploy/ against a real server's /metrics:
after a real generation (and an error), every metric and label their PromQL uses is exported."""

from __future__ import annotations

import httpx
import pytest

from tests.monitoring import alert_exprs, dashboard_exprs, exposed_labels, problems

pytestmark = pytest.mark.integration


def test_dashboard_and_alerts_match_live_metrics(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": "smollm2:135m", "prompt": "Hi", "stream": False,
                                         "options": {"num_predict": 4, "temperature": 0}})
    assert r.status_code == 200, r.text
    assert http.post("/api/show", json={"model": "no-such-model"}).status_code == 404
    text = http.get("/metrics").text
    assert problems(dashboard_exprs() + alert_exprs(), text) == []
    exposed = exposed_labels(text)
    assert {"model"} <= exposed["corral_time_to_first_token_seconds_bucket"]
    assert {"device"} <= exposed["corral_device_memory_bytes"]
