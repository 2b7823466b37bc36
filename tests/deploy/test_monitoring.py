"""deploy/monitoring/ read as Prometheus and Grafana would: every alert rule and dashboard query
uses only metrics the README's table documents, with labels those metrics have. (`make check`
also runs promtool on the rules and on their unit tests, deploy/monitoring/alerts.test.yaml.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.support.metrics import MONITORING, documented_metrics

TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
SCRAPE_SERIES = {"up": frozenset()}
"""Series Prometheus makes itself for each target."""
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)
IDENTIFIER = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(rf"({IDENTIFIER})?\s*\{{([^}}]*)\}}")
MATCHER = re.compile(rf"({IDENTIFIER})\s*(?:=~|!~|!=|=)\s*\"\"")


def labels_of_series() -> dict[str, frozenset[str]]:
    """Each series a query may name, with the labels it carries."""
    found = dict(SCRAPE_SERIES)
    for metric in documented_metrics().values():
        for series in metric.series:
            extra = {"le"} if series.endswith("_bucket") else set()
            found[series] = metric.labels | extra
    return {name: labels | TARGET_LABELS for name, labels in found.items()}


def references(expr: str) -> Iterator[tuple[str, frozenset[str]]]:
    """(series, labels its matchers name) for every selector in a PromQL expression, then
    ("", labels) for the labels its groupings name."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    grouped = frozenset(
        label.strip() for group in GROUPING.findall(text) for label in group.split(",")
    ) - {""}
    text = GROUPING.sub(" ", text)
    for name, matchers in SELECTOR.findall(text):
        assert name, f"a selector without a metric name in {expr!r}"
        yield name, frozenset(MATCHER.findall(matchers))
    text = SELECTOR.sub(" ", text)
    for match in re.finditer(rf"(?<![\w$.])({IDENTIFIER})(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in KEYWORDS:
            yield name, frozenset()
    yield "", grouped


def check(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    problems = []
    available: set[str] = set()
    for name, labels in references(expr):
        if not name:
            if labels - available:
                problems.append(f"groups by {sorted(labels - available)}: no such label")
            continue
        if name not in known:
            problems.append(f"{name}: not a documented metric")
            continue
        available |= known[name]
        if labels - known[name]:
            problems.append(f"{name}: no label {sorted(labels - known[name])}")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_checker_finds_what_is_wrong() -> None:
    known = labels_of_series()
    assert (
        check('sum by (job) (rate(dispatcher_gateway_dispatches_total{mode="x"}[5m]))', known) == []
    )
    assert check("rate(dispatcher_gateway_dispatch_total[5m])", known) == [
        "dispatcher_gateway_dispatch_total: not a documented metric"
    ]
    assert check('dispatcher_gateway_streams{service="esign"} > 0', known) == [
        "dispatcher_gateway_streams: no label ['service']"
    ]
    assert check("sum by (outcome) (dispatcher_gateway_streams)", known) == [
        "groups by ['outcome']: no such label"
    ]
    assert check("max(dispatcher_gateway_streams) > bool 0 or vector(1)", known) == []


def test_every_alert_rule_reads_documented_metrics_and_says_what_to_do() -> None:
    known = labels_of_series()
    rules = alert_rules()
    names = {str(rule["alert"]) for rule in rules}
    # What pages someone (issue 13): each has its rule.
    for wanted in (
        "UpstreamCredentialsRefused",
        "UpstreamCircuitOpen",
        "OutboxStuck",
        "WebhookSignatureFailures",
        "CallbacksOverdue",
        "StoreUnavailable",
        "StreamsEndedForSlowness",
    ):
        assert f"DispatcherGateway{wanted}" in names
    for rule in rules:
        assert check(str(rule["expr"]), known) == [], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_every_dashboard_query_reads_documented_metrics() -> None:
    known = labels_of_series()
    queries = dashboard_queries()
    assert len(queries) >= 10
    for expr in queries:
        assert check(expr, known) == [], expr
