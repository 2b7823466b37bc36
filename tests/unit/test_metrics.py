"""metrics.py: what Counts keeps between scrapes (the outbox's unsent jobs), and what a registry
of one gateway exposes before anything happened."""

from __future__ import annotations

from dispatcher_gateway.metrics import Counts, GatewayGauges, Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_outbox_gauges_are_the_oldest_unsent_job_and_how_many() -> None:
    clock = Clock()
    counts = Counts(Metrics(), clock)
    assert counts.outbox() == (0, 0.0)
    counts.outbox_pending("job_a", queued_at=900.0, until=1100.0)
    counts.outbox_pending("job_b", queued_at=990.0, until=1100.0)
    assert counts.outbox() == (2, 100.0)
    counts.outbox_settled("job_a")
    assert counts.outbox() == (1, 10.0)
    counts.outbox_settled("job_unknown")
    assert counts.outbox() == (1, 10.0)


def test_a_job_not_heard_of_again_by_its_time_is_another_replicas() -> None:
    clock = Clock()
    counts = Counts(Metrics(), clock)
    counts.outbox_pending("job_a", queued_at=900.0, until=1050.0)
    counts.outbox_pending("job_b", queued_at=950.0, until=1200.0)
    clock.now = 1100.0
    assert counts.outbox() == (1, 150.0)
    # Told again (a retry due later): kept.
    counts.outbox_pending("job_b", queued_at=950.0, until=1500.0)
    clock.now = 1300.0
    assert counts.outbox() == (1, 350.0)


def test_gauges_are_read_when_scraped() -> None:
    metrics = Metrics()
    counts = Counts(metrics, Clock())
    state = {"up": True}
    metrics.registry.register(
        GatewayGauges(
            counts,
            streams=lambda: 3,
            circuit=lambda: "half_open",
            store_up=lambda: state["up"],
            states=("closed", "open", "half_open"),
        )
    )
    value = metrics.registry.get_sample_value
    assert value("dispatcher_gateway_streams") == 3
    assert value("dispatcher_gateway_store_up") == 1
    assert value("dispatcher_gateway_upstream_circuit_open") == 1
    assert value("dispatcher_gateway_upstream_circuit_state", {"state": "half_open"}) == 1
    assert value("dispatcher_gateway_upstream_circuit_state", {"state": "closed"}) == 0
    state["up"] = False
    assert value("dispatcher_gateway_store_up") == 0


def test_known_label_values_start_at_zero_and_registries_count_apart() -> None:
    one, two = Metrics(), Metrics()
    Counts(one).job_ended("postal", "callback_overdue")
    ended = {"service": "postal", "state": "callback_overdue"}
    assert one.registry.get_sample_value("dispatcher_gateway_jobs_ended_total", ended) == 1
    assert two.registry.get_sample_value("dispatcher_gateway_jobs_ended_total", ended) == 0
    slow = {"reason": "slow"}
    assert two.registry.get_sample_value("dispatcher_gateway_streams_ended_total", slow) == 0
    assert two.registry.get_sample_value("process_cpu_seconds_total") is not None


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics()
    page, media_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert media_type.startswith("application/openmetrics-text")
    assert page.endswith(b"# EOF\n")
    page, media_type = metrics.render("")
    assert media_type.startswith("text/plain")
    assert b"dispatcher_gateway_dispatches_total" in page
