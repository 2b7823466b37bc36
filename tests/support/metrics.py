"""The metrics the README documents (its table under "## Metrics"), read from the README itself
so that the tests holding /metrics, the alert rules and the dashboard to it cannot drift from
it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MONITORING = ROOT / "deploy" / "monitoring"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Documented:
    name: str
    """As exposed: a counter's with its `_total`."""
    type: str
    labels: frozenset[str]

    @property
    def family(self) -> str:
        """The name prometheus-client's parser gives its family (a counter's without `_total`)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    @property
    def series(self) -> frozenset[str]:
        """The sample names a query may use."""
        if self.type == "histogram":
            return frozenset(self.name + suffix for suffix in HISTOGRAM_SERIES)
        return frozenset({self.name})


def documented_metrics() -> dict[str, Documented]:
    """Every row of the README's metrics table, by metric name."""
    text = README.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    found: dict[str, Documented] = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        name = cells[0].strip("`")
        labels = frozenset(re.findall(r"`([a-z_]+)`", cells[2]))
        found[name] = Documented(name, cells[1], labels)
    assert found, "the README's metrics table is empty"
    return found


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one series (its name and labels) in a /metrics page; 0 if absent."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def exposed_series() -> frozenset[str]:
    """Every sample name the documented metrics expose."""
    return frozenset().union(*(m.series for m in documented_metrics().values()))
