"""Test support for deploy/: the PromQL in the Grafana dashboard and the Prometheus alert rules,
reduced to (metric, labels) references, checked against a /metrics exposition."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "corral.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Labels Prometheus adds at scrape time (never in /metrics itself).
TARGET_LABELS = frozenset({"instance", "job"})

_METRIC = re.compile(r"\b(corral_[A-Za-z0-9_]+)(\{([^}]*)\})?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass
class Expr:
    where: str
    text: str
    selectors: dict[str, set[str]] = field(default_factory=dict)  # metric -> labels matched on
    grouping: set[str] = field(default_factory=set)  # labels in by (...) / without (...)


def parse_expr(where: str, text: str) -> Expr:
    out = Expr(where, text)
    for m in _METRIC.finditer(text):
        out.selectors.setdefault(m.group(1), set()).update(_MATCHER.findall(m.group(3) or ""))
    for group in _GROUPING.findall(text):
        out.grouping.update(label.strip() for label in group.split(",") if label.strip())
    return out


def dashboard_exprs(path: Path = DASHBOARD) -> list[Expr]:
    dash: dict[str, Any] = json.loads(path.read_text())
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(parse_expr(f"panel '{panel['title']}' {target['refId']}", target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("definition")
        if query and "corral_" in query:
            exprs.append(parse_expr(f"variable {var['name']}", query))
    return exprs


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_exprs(path: Path = ALERTS) -> list[Expr]:
    return [parse_expr(f"alert {rule['alert']}", str(rule["expr"])) for rule in alert_rules(path)]


def exposed_labels(metrics_text: str) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry (from a /metrics body)."""
    out: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out[sample.name].update(sample.labels)
    return dict(out)


def problems(exprs: list[Expr], metrics_text: str) -> list[str]:
    """Every metric or label an expression uses that /metrics does not have."""
    exposed = exposed_labels(metrics_text)
    found: list[str] = []
    for e in exprs:
        if not e.selectors:
            found.append(f"{e.where}: no corral metric in {e.text!r}")
        available: set[str] = set()
        for metric, labels in e.selectors.items():
            if metric not in exposed:
                found.append(f"{e.where}: metric {metric} is not exported")
                continue
            available |= exposed[metric]
            missing = labels - exposed[metric] - TARGET_LABELS
            if missing:
                found.append(f"{e.where}: {metric} has no label(s) {sorted(missing)}")
        unknown = e.grouping - available - TARGET_LABELS
        if unknown and available:
            found.append(f"{e.where}: grouping by {sorted(unknown)}, which no metric in it has")
    return found
