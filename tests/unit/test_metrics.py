"""metrics.py: what Counts keeps between scrapes (the outbox's unsent jobs), and what a registry
of one gateway exposes before anything happened."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core.errors import SlowConsumer
from dispatcher_gateway.core.model import (
    DispatchSpec,
    EventFilter,
    JobState,
    Mode,
    Service,
    UpstreamFailure,
)
from dispatcher_gateway.core.retry import RetryPolicy
from dispatcher_gateway.metrics import Counts, GatewayGauges, Metrics
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import build_core, gateway_harness, running_outbox, take
from ..support.upstream import ScriptedUpstream, failure


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


async def test_the_outbox_holds_a_job_pending_while_it_retries_and_settles_it_once_sent() -> None:
    store = MemoryStore()
    await store.open()
    upstream = ScriptedUpstream()
    upstream.script = [failure(503, "service_unavailable")] * 3
    metrics = Metrics()
    counts = Counts(metrics)
    # Retries far enough apart that the job is seen pending between them.
    gateway = build_core(
        store, upstream, retry=RetryPolicy(base=0.2, cap=0.2, give_up_after=60.0), observer=counts
    )
    spec = DispatchSpec((Service.ESIGN,), Mode.ASYNC, {"template": {"id": 1, "data": {}}})
    try:
        async with running_outbox(gateway), asyncio.timeout(10):
            job = await gateway.dispatches.submit("anonymous", spec, budget=None)
            while counts.outbox()[0] == 0:
                await asyncio.sleep(0.005)
            assert job.job_id in counts.pending
            while (found := await store.get_job(job.job_id)) is None or (
                found.state is not JobState.SUBMITTED
            ):
                await asyncio.sleep(0.01)
            assert counts.outbox() == (0, 0.0)
    finally:
        await store.close()
    value = metrics.registry.get_sample_value
    esign = {"endpoint": "POST /api/esign", "mode": "async"}
    assert value("dispatcher_gateway_upstream_requests_total", esign | {"status": "503"}) == 3
    assert value("dispatcher_gateway_upstream_requests_total", esign | {"status": "202"}) == 1
    assert value("dispatcher_gateway_upstream_request_duration_seconds_count", esign) == 4
    assert value("dispatcher_gateway_upstream_dispatch_calls_total", {"outcome": "retried"}) == 3
    assert value("dispatcher_gateway_upstream_dispatch_calls_total", {"outcome": "accepted"}) == 1
    assert value("dispatcher_gateway_upstream_rate_wait_seconds_count") >= 4


async def test_live_events_are_timed_jobs_ended_counted_and_slow_streams_ended_by_reason() -> None:
    metrics = Metrics()
    async with gateway_harness(Counts(metrics)) as h:
        job_id = await h.job()
        stream = h.gateway.streams.subscribe("anonymous", "", EventFilter())
        await take(stream, 1)  # caught up; now live
        await h.webhook(job_id, "dispatch_completed", "wh-end")
        assert [e.type for e in await take(stream, 1)] == ["dispatch_completed"]
        for i in range(80):  # more than the harness's backlog of 50, never read
            await h.webhook(job_id, f"progress_{i}", f"wh-{i}")
        await asyncio.sleep(0.2)
        with pytest.raises(SlowConsumer):
            await take(stream, 1000)
    value = metrics.registry.get_sample_value
    assert value("dispatcher_gateway_event_delivery_seconds_count", {"source": "webhook"}) == 1
    ended = {"service": "email", "state": "succeeded"}
    assert value("dispatcher_gateway_jobs_ended_total", ended) == 1
    assert value("dispatcher_gateway_webhooks_total", {"outcome": "recorded"}) == 81
    assert value("dispatcher_gateway_streams_ended_total", {"reason": "slow"}) == 1


async def test_a_canceled_job_is_counted_ended_canceled_and_a_retry_counted_once() -> None:
    store = MemoryStore()
    await store.open()
    metrics = Metrics()
    gateway = build_core(store, ScriptedUpstream(), observer=Counts(metrics))
    spec = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1, "data": {}}})
    try:
        canceled = await gateway.dispatches.submit("anonymous", spec, budget=None)
        await gateway.control.cancel("anonymous", canceled.job_id)
        await gateway.control.cancel("anonymous", canceled.job_id)
        failed = await gateway.dispatches.submit("anonymous", spec, budget=None)
        await gateway.records.fail(failed, UpstreamFailure("invalid_field", "refused", 400))
        for _ in range(2):
            await gateway.control.retry("anonymous", failed.job_id)
    finally:
        await store.close()
    value = metrics.registry.get_sample_value
    email = {"service": "email"}
    assert value("dispatcher_gateway_jobs_ended_total", email | {"state": "canceled"}) == 1
    assert value("dispatcher_gateway_jobs_ended_total", email | {"state": "failed"}) == 1
    assert value("dispatcher_gateway_job_retries_total", email) == 1
