"""Prometheus metrics in the text exposition format, without a client library: a handful of
counters and gauges is all the gateway exports, served at /metrics on the admin port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

LabelValues = tuple[str, ...]


class Counter:
    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + by

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0.0)

    def samples(self) -> Iterable[tuple[LabelValues, float]]:
        with self._lock:
            return list(self._values.items())

    kind = "counter"


class Gauge:
    """A value read when scraped."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.labels = name, help_text, ()
        self.read = read

    def samples(self) -> Iterable[tuple[LabelValues, float]]:
        return [((), float(self.read()))]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge] = {}

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self._metrics[name] = metric
        return metric

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> Gauge:
        metric = Gauge(name, help_text, read)
        self._metrics[name] = metric
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for values, number in metric.samples():
                pairs = ",".join(
                    f'{key}="{_escape(value)}"'
                    for key, value in zip(metric.labels, values, strict=True)
                )
                label_text = f"{{{pairs}}}" if pairs else ""
                lines.append(f"{metric.name}{label_text} {number:g}")
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
"""The process's metrics. Counters only ever grow; gauges are registered by app.py."""

DISPATCHES = REGISTRY.counter(
    "dispatcher_gateway_dispatches_total",
    "Dispatch requests accepted as new jobs.",
    ("service", "mode"),
)
UPSTREAM_CALLS = REGISTRY.counter(
    "dispatcher_gateway_upstream_dispatch_calls_total",
    "Dispatch calls to the upstream, by outcome (accepted, retried, failed).",
    ("outcome",),
)
CALLBACKS_OVERDUE = REGISTRY.counter(
    "dispatcher_gateway_callbacks_overdue_total",
    "Jobs failed callback_overdue: no terminal webhook within their service's deadline.",
    ("service",),
)
WEBHOOKS = REGISTRY.counter(
    "dispatcher_gateway_webhooks_total",
    "Webhooks verified and handed to the store, by outcome (recorded, duplicate).",
    ("outcome",),
)


class Counts:
    """What core reports (a core.ports.Observer), counted in the process's metrics."""

    def dispatch_accepted(self, service: str, mode: str) -> None:
        DISPATCHES.inc(service, mode)

    def upstream_dispatch(self, outcome: str) -> None:
        UPSTREAM_CALLS.inc(outcome)

    def callback_overdue(self, service: str) -> None:
        CALLBACKS_OVERDUE.inc(service)

    def webhook(self, outcome: str) -> None:
        WEBHOOKS.inc(outcome)
