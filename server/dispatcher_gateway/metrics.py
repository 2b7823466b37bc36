"""Prometheus metrics on prometheus-client, served at /metrics on the admin port.

Each GatewayApp has a registry of its own (two gateways in one process, as the tests run them,
count apart). `Counts` is what core reports to (a core.ports.Observer); `GatewayGauges` reads
what is true at scrape time (streams, the circuit, the outbox); `rpc/metrics.py` counts gRPC
calls as go-grpc-prometheus names them. The README's metrics table lists every name, and a test
holds the page to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .core import states
from .core.model import JobState, Service

# The `_created` series double every counter's series and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it untyped

PREFIX = "dispatcher_gateway_"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: an upstream call is answered in milliseconds (async) up to 120 s (sync)."""
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds: a webhook handled, an event streamed, a rate slot waited for (mostly 0)."""
RATE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

OPENMETRICS = "application/openmetrics-text"

ENDED_STATES = (
    JobState.SUCCEEDED.value,
    JobState.FAILED.value,
    states.OVERDUE,
    JobState.CANCELED.value,
)
STREAM_END_REASONS = ("slow", "shutdown", "store_unavailable")
WEBHOOK_OUTCOMES = ("recorded", "duplicate")
WEBHOOK_REFUSED = "unauthorized"
"""The webhook receiver's answer to a bad or missing signature (webhooks/app.py's table)."""
DISPATCH_OUTCOMES = ("accepted", "retried", "failed")


class Metrics:
    """The gateway's instruments, in one registry (with the process's own metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            # The default collectors describe this process: each registry may hold them too.
            self.registry.register(collector)
        r = self.registry
        self.dispatches = Counter(
            PREFIX + "dispatches_total",
            "Dispatch requests accepted as new jobs (not idempotent replays).",
            ("service", "mode"),
            registry=r,
        )
        self.upstream_dispatch_calls = Counter(
            PREFIX + "upstream_dispatch_calls_total",
            "The outbox's dispatch calls to the upstream, by outcome (accepted, retried, failed).",
            ("outcome",),
            registry=r,
        )
        self.upstream_requests = Counter(
            PREFIX + "upstream_requests_total",
            "Requests sent upstream for jobs, by endpoint, mode and HTTP status (0: no answer).",
            ("endpoint", "mode", "status"),
            registry=r,
        )
        self.upstream_request_seconds = Histogram(
            PREFIX + "upstream_request_duration_seconds",
            "Seconds from sending a request upstream to its answer (or giving up on one).",
            ("endpoint", "mode"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_wait_seconds = Histogram(
            PREFIX + "upstream_rate_wait_seconds",
            "Seconds a call waited for a slot of the account's upstream rate limit.",
            buckets=RATE_WAIT_BUCKETS,
            registry=r,
        )
        self.callbacks_overdue = Counter(
            PREFIX + "callbacks_overdue_total",
            "Jobs failed callback_overdue: no terminal webhook within their service's deadline.",
            ("service",),
            registry=r,
        )
        self.jobs_ended = Counter(
            PREFIX + "jobs_ended_total",
            "Jobs that reached their terminal event, by service and state (succeeded, failed, "
            "callback_overdue, canceled).",
            ("service", "state"),
            registry=r,
        )
        self.job_retries = Counter(
            PREFIX + "job_retries_total",
            "Failed jobs sent again by RetryJob as new jobs.",
            ("service",),
            registry=r,
        )
        self.webhooks = Counter(
            PREFIX + "webhooks_total",
            "Webhooks verified and handed to the store, by outcome (recorded, duplicate).",
            ("outcome",),
            registry=r,
        )
        self.webhook_requests = Counter(
            PREFIX + "webhook_requests_total",
            "Requests to the webhook listener, by outcome: recorded, duplicate, or the refusal "
            "(unauthorized, not_found, bad_request, unavailable, ...).",
            ("outcome",),
            registry=r,
        )
        self.webhook_seconds = Histogram(
            PREFIX + "webhook_duration_seconds",
            "Seconds from a webhook's arrival to its answer, by outcome.",
            ("outcome",),
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.webhooks_held = Counter(
            PREFIX + "webhooks_held_total",
            "Verified webhooks that waited (at most 0.1 s each) before being recorded, for a "
            "stream of this process that fell 100 events behind while its reader kept reading "
            "(core/hub.py): a process saturated with webhooks still feeds its streams.",
            registry=r,
        )
        self.streams_ended = Counter(
            PREFIX + "streams_ended_total",
            "Streams the gateway ended, by reason: slow (the reader fell more than "
            "GATEWAY_STREAM_BACKLOG events behind), shutdown, store_unavailable.",
            ("reason",),
            registry=r,
        )
        self.event_delivery_seconds = Histogram(
            PREFIX + "event_delivery_seconds",
            "Seconds from an event's record in the store to its sending on a live stream, by "
            "source (webhook, gateway).",
            ("source",),
            buckets=FAST_BUCKETS,
            registry=r,
        )

        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """The series whose label values are known before their first event: exposed at 0, so
        that rate() and increase() count that first event, and alerts have a series to read."""
        for service in Service:
            self.callbacks_overdue.labels(service.value)
            self.job_retries.labels(service.value)
            for state in ENDED_STATES:
                self.jobs_ended.labels(service.value, state)
        for outcome in DISPATCH_OUTCOMES:
            self.upstream_dispatch_calls.labels(outcome)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        for outcome in (*WEBHOOK_OUTCOMES, WEBHOOK_REFUSED):
            self.webhook_requests.labels(outcome)
        for reason in STREAM_END_REASONS:
            self.streams_ended.labels(reason)

    def webhooks_refused(self) -> dict[str, float]:
        """Webhook requests refused since the start, by reason (the console's overview)."""
        refused: dict[str, float] = {}
        for metric in self.webhook_requests.collect():
            for sample in metric.samples:
                outcome = sample.labels.get("outcome", "")
                if sample.name.endswith("_total") and outcome not in WEBHOOK_OUTCOMES:
                    refused[outcome] = sample.value
        return refused

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The page and its media type: OpenMetrics when the scraper asks for it."""
        if OPENMETRICS in accept:
            encoder, media_type = choose_encoder(accept)
            return encoder(self.registry), media_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class WorkerPages:
    """The pages of a gateway's workers (GATEWAY_WORKERS) as one: each family once, its samples
    from every worker with a `worker` label (the worker's index) added. Counters and histograms
    stay per process, as they are per replica: `sum` them."""

    def __init__(self, pages: Mapping[str, str]) -> None:
        """`pages`: worker index -> its page in the Prometheus text format."""
        self.pages = pages

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for worker, page in self.pages.items():
            for family in text_string_to_metric_families(page):
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                merged.samples.extend(
                    Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp)
                    for s in family.samples
                )
        return families.values()


def render_workers(pages: Mapping[str, str], accept: str = "") -> tuple[bytes, str]:
    """The workers' pages merged (`WorkerPages`), as `Metrics.render` writes one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerPages(pages))
    if OPENMETRICS in accept:
        encoder, media_type = choose_encoder(accept)
        return encoder(registry), media_type
    return generate_latest(registry), CONTENT_TYPE_LATEST


class Counts:
    """What core reports (a core.ports.Observer), counted in a gateway's metrics."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        self.pending: dict[str, tuple[float, float]] = {}
        """Job id -> (queued at, forget after): jobs this replica's outbox holds unsent."""
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        """(metric, labels) -> the metric's child for them: `labels()` checks and locks each
        time, and the counts below are taken on every Dispatch, webhook and event streamed."""

    def _child(self, metric: Any, *labels: str) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def dispatch_accepted(self, service: str, mode: str) -> None:
        self._child(self.metrics.dispatches, service, mode).inc()

    def upstream_dispatch(self, outcome: str) -> None:
        self.metrics.upstream_dispatch_calls.labels(outcome).inc()

    def upstream_request(self, endpoint: str, mode: str, status: int, seconds: float) -> None:
        self._child(self.metrics.upstream_requests, endpoint, mode, str(status)).inc()
        self._child(self.metrics.upstream_request_seconds, endpoint, mode).observe(
            max(0.0, seconds)
        )

    def rate_waited(self, seconds: float) -> None:
        self.metrics.rate_wait_seconds.observe(max(0.0, seconds))

    def callback_overdue(self, service: str) -> None:
        self.metrics.callbacks_overdue.labels(service).inc()

    def stream_ended(self, reason: str) -> None:
        self.metrics.streams_ended.labels(reason).inc()

    def job_ended(self, service: str, state: str) -> None:
        self._child(self.metrics.jobs_ended, service, state).inc()

    def job_retried(self, service: str) -> None:
        self.metrics.job_retries.labels(service).inc()

    def webhook(self, outcome: str) -> None:
        self._child(self.metrics.webhooks, outcome).inc()

    def webhook_handled(self, outcome: str, seconds: float) -> None:
        self._child(self.metrics.webhook_requests, outcome).inc()
        self._child(self.metrics.webhook_seconds, outcome).observe(max(0.0, seconds))

    def webhook_held(self) -> None:
        self.metrics.webhooks_held.inc()

    def event_streamed(self, source: str, seconds: float) -> None:
        self._child(self.metrics.event_delivery_seconds, source).observe(max(0.0, seconds))

    def outbox_pending(self, job_id: str, queued_at: float, until: float) -> None:
        self.pending[job_id] = (queued_at, until)

    def outbox_settled(self, job_id: str) -> None:
        self.pending.pop(job_id, None)

    def outbox(self) -> tuple[int, float]:
        """Jobs this replica's outbox holds unsent, and the oldest one's age in seconds. Entries
        not heard of again by their time were taken over by another replica: forgotten here."""
        now = self.clock()
        for job_id in [j for j, (_, until) in self.pending.items() if until < now]:
            del self.pending[job_id]
        oldest = min((queued for queued, _ in self.pending.values()), default=now)
        return len(self.pending), max(0.0, now - oldest)


class GatewayGauges(Collector):
    """Gauges read when scraped: nothing is kept up to date between scrapes."""

    def __init__(
        self,
        counts: Counts,
        *,
        streams: Callable[[], int],
        circuit: Callable[[], str],
        store_up: Callable[[], bool],
        states: Iterable[str],
    ) -> None:
        self.counts = counts
        self.streams = streams
        self.circuit = circuit
        self.store_up = store_up
        self.states = tuple(states)

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            PREFIX + "streams",
            "Event streams (Subscribe, WatchJob) this replica holds open.",
            value=self.streams(),
        )
        yield GaugeMetricFamily(
            PREFIX + "store_up",
            "1 while the store answers (looked at every second), 0 while it does not.",
            value=float(self.store_up()),
        )
        state = self.circuit()
        yield GaugeMetricFamily(
            PREFIX + "upstream_circuit_open",
            "1 while the upstream circuit breaker is open or probing.",
            value=float(state != "closed"),
        )
        circuit = GaugeMetricFamily(
            PREFIX + "upstream_circuit_state",
            "The upstream circuit breaker's state: 1 for the current one, 0 for the others.",
            labels=("state",),
        )
        for name in self.states:
            circuit.add_metric((name,), float(name == state))
        yield circuit
        depth, age = self.counts.outbox()
        yield GaugeMetricFamily(
            PREFIX + "outbox_pending_jobs",
            "Jobs this replica's outbox holds queued and not yet sent upstream (retrying, waiting "
            "for the circuit or a rate slot).",
            value=depth,
        )
        yield GaugeMetricFamily(
            PREFIX + "outbox_oldest_pending_seconds",
            "Seconds since the oldest of those jobs was queued; 0 when there is none.",
            value=age,
        )
