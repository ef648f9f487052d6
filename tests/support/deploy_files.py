"""The deployment files (Dockerfile, compose, Kubernetes, Prometheus, Grafana) as data, for the tests that check
them against the code: tests/test_deploy.py and tests/test_prometheus.py."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "annotation-proxy.json"
RULES = DEPLOY / "prometheus" / "rules"
HIT_RATIO_PANEL = "Hit ratio"

# A PromQL identifier: metric names, recording rule names (with colons), label names, function names.
IDENTIFIER = re.compile(r"(?<![\w:$\"])[a-zA-Z_:][a-zA-Z0-9_:]*")
# A selector of one of the proxy's metrics: name{matchers}.
SELECTOR = re.compile(r"\b(annotation_proxy_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# A selector of a recording rule: level:metric:operations{matchers}.
RULE_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+)\s*\{([^}]*)\}")


def require_binary(name: str) -> str:
    """The path of a tool CI installs; fails (never skips) without it, saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: apt-get install prometheus (Debian; .ci/run installs it)")
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_hit_ratio_expr(dashboard: dict[str, Any]) -> str:
    """The expression of the dashboard's hit-ratio panel, as Grafana sends it (before variable substitution)."""
    (panel,) = [p for p in dashboard_panels(dashboard) if p["title"] == HIT_RATIO_PANEL]
    expr: str = panel["targets"][0]["expr"]
    return expr


def substitute_grafana_variables(expr: str, job: str) -> str:
    """Grafana's part: the dashboard's $job variable (one value: inserted as it is) and $__rate_interval."""
    return expr.replace("$job", job).replace("$__rate_interval", "1m")


@dataclass(frozen=True)
class Expression:
    where: str  # for messages: the file and the panel or rule
    text: str  # PromQL (or text that names metrics, such as an alert's description)
    is_promql: bool = True


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))


def rules() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                yield path, rule


def recording_rule_names() -> set[str]:
    return {rule["record"] for _, rule in rules() if "record" in rule}


def expressions() -> list[Expression]:
    """Every PromQL expression of the dashboard and the rule files, and the rules' annotation texts."""
    found: list[Expression] = []
    dashboard = load_dashboard()
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            found.append(Expression(f"{DASHBOARD.name}: panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        # label_values(metric, label) is Grafana's, not PromQL: its metric name still counts.
        found.append(Expression(f"{DASHBOARD.name}: variable {variable['name']}", variable["definition"], False))
    for path, rule in rules():
        name = rule.get("record") or rule["alert"]
        found.append(Expression(f"{path.name}: {name}", rule["expr"]))
        for key, text in rule.get("annotations", {}).items():
            found.append(Expression(f"{path.name}: {name} annotation {key}", text, False))
    return found


def identifiers(text: str) -> set[str]:
    """Identifiers outside string literals (label values, legends) and Grafana variables."""
    without_strings = re.sub(r'"[^"]*"', '""', text)
    return set(IDENTIFIER.findall(without_strings))


def metric_names(text: str) -> set[str]:
    """The proxy's and the process collector's metric names used in ``text``."""
    return {name for name in identifiers(text) if name.startswith(("annotation_proxy_", "process_"))}


def recording_rules_used(text: str) -> set[str]:
    return {name for name in identifiers(text) if ":" in name}


def selectors(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every label matcher on one of the proxy's metrics."""
    for metric, body in SELECTOR.findall(text):
        for label, operator, value in MATCHER.findall(body):
            yield metric, label, operator, value


def rule_selectors(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(recording rule, label, operator, value) for every label matcher on a recording rule."""
    for rule, body in RULE_SELECTOR.findall(text):
        for label, operator, value in MATCHER.findall(body):
            yield rule, label, operator, value
