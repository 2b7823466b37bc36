"""The outbox's rules, on the in-memory store with a scripted upstream: how each job is sent
(async for a service that calls back, sync in the background for the rest), what is retried and
what fails at once, the give-up age, Retry-After, jobs beyond the rate waiting in order, the
callback deadline, and the attempts recorded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.callbacks import CallbackRules
from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.core.gateway import Gateway
from dispatcher_gateway.core.model import (
    DispatchSpec,
    Job,
    JobEvent,
    JobState,
    Mode,
    Service,
)
from dispatcher_gateway.core.outbox import (
    IDLE_POLL,
    PAUSED_POLL,
    SLOT_FRESHNESS,
    SYNC_CALL_GRACE,
)
from dispatcher_gateway.core.ports import NoObserver
from dispatcher_gateway.core.retry import RateLimit, RetryPolicy
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import (
    NEVER_OPENS,
    TOKENS,
    build_core,
    running_outbox,
)
from ..support.upstream import FAST, UNLIMITED, ScriptedUpstream, failure

WAIT_TIMEOUT = 10.0

RETRIED = {
    "connection failure": failure(0, "upstream_unreachable"),
    "timeout": failure(0, "upstream_timeout"),
    "429": failure(429, "rate_limited"),
    "500": failure(500, "internal_error"),
    "502": failure(502, "bad_gateway"),
    "503": failure(503, "service_unavailable"),
}
FINAL = {
    "400": failure(400, "invalid_field"),
    "401": failure(401, "unauthorized"),
    "403": failure(403, "forbidden"),
    "404": failure(404, "template_not_found"),
    "409": failure(409, "conflict"),
    "415": failure(415, "unsupported_media_type"),
    "417": failure(417, "provider_error"),
}


@dataclass
class Harness:
    store: MemoryStore
    upstream: ScriptedUpstream
    gateway: Gateway

    async def queue(self, service: Service = Service.ESIGN) -> str:
        spec = DispatchSpec((service,), Mode.ASYNC, {"template": {"id": 1, "data": {}}})
        return (await self.gateway.dispatches.submit("anonymous", spec, budget=None)).job_id

    async def settled(self, job_id: str, *, states: tuple[JobState, ...]) -> Job:
        async with asyncio.timeout(WAIT_TIMEOUT):
            while True:
                job = await self.store.get_job(job_id)
                assert job is not None
                if job.state in states:
                    return job
                await asyncio.sleep(0.01)

    async def event_types(self, job_id: str) -> list[str]:
        events = await self.store.read_events(client="anonymous", job_id=job_id)
        return [e.type for e in events]


@contextlib.asynccontextmanager
async def running(
    policy: RetryPolicy = FAST,
    rate: RateLimit = UNLIMITED,
    callbacks: CallbackRules | None = None,
    sync_concurrency: int = 100,
) -> AsyncIterator[Harness]:
    store = MemoryStore()
    await store.open()
    upstream = ScriptedUpstream()
    gateway = build_core(
        store,
        upstream,
        rate=rate,
        retry=policy,
        breaker_threshold=NEVER_OPENS,
        callbacks=callbacks,
        sync_concurrency=sync_concurrency,
    )
    try:
        async with running_outbox(gateway):
            yield Harness(store, upstream, gateway)
    finally:
        await store.close()


@pytest.mark.parametrize("error", RETRIED.values(), ids=RETRIED.keys())
async def test_transient_failures_are_retried_with_the_same_idempotency_key(
    error: UpstreamError,
) -> None:
    async with running() as h:
        h.upstream.script = [error, error]
        job_id = await h.queue()
        job = await h.settled(job_id, states=(JobState.SUBMITTED, JobState.FAILED))
        assert job.state is JobState.SUBMITTED
        assert h.upstream.keys == [job_id] * 3
        assert await h.event_types(job_id) == ["queued", *[states.ATTEMPT] * 3, "submitted"]


@pytest.mark.parametrize("error", FINAL.values(), ids=FINAL.keys())
async def test_other_4xx_fail_the_job_at_once_with_the_upstreams_error(
    error: UpstreamError,
) -> None:
    async with running() as h:
        h.upstream.script = [error]
        job_id = await h.queue()
        job = await h.settled(job_id, states=(JobState.SUBMITTED, JobState.FAILED))
        assert job.state is JobState.FAILED
        assert len(h.upstream.calls) == 1
        assert job.error is not None
        assert job.error.http_status == error.failure.http_status
        assert job.error.code == error.failure.code
        assert job.error.details == error.failure.details
        events = await h.store.read_events(client="anonymous", job_id=job_id)
        assert [e.type for e in events] == ["queued", states.ATTEMPT, "failed"]
        assert events[-1].terminal
        assert events[-1].data["http_status"] == error.failure.http_status
        assert events[-1].data["details"] == error.failure.details
        await asyncio.sleep(0.1)  # and nothing is sent again
        assert len(h.upstream.calls) == 1


async def test_a_job_past_its_give_up_age_fails_with_its_last_error() -> None:
    policy = RetryPolicy(base=0.01, cap=0.02, give_up_after=0.3)
    async with running(policy) as h:
        early, last = failure(503, "service_unavailable"), failure(502, "bad_gateway")
        h.upstream.otherwise = lambda: early if len(h.upstream.calls) <= 3 else last
        job_id = await h.queue()
        job = await h.settled(job_id, states=(JobState.SUBMITTED, JobState.FAILED))
        assert job.state is JobState.FAILED
        assert job.error is not None
        assert (job.error.code, job.error.http_status) == ("bad_gateway", 502)
        assert job.error.message.startswith("gave up after")
        assert "bad_gateway happened" in job.error.message
        assert len(h.upstream.calls) > 3
        assert await h.event_types(job_id) == [
            "queued",
            *[states.ATTEMPT] * len(h.upstream.calls),
            "failed",
        ]
        tries = len(h.upstream.calls)
        await asyncio.sleep(0.1)
        assert len(h.upstream.calls) == tries  # given up: never sent again


async def test_retry_after_is_honoured_over_a_shorter_backoff() -> None:
    async with running() as h:
        h.upstream.script = [failure(429, "rate_limited", retry_after=0.5)]
        job_id = await h.queue()
        await h.settled(job_id, states=(JobState.SUBMITTED,))
        first, second = (c.at for c in h.upstream.calls)
        assert second - first >= 0.5


async def test_async_jobs_beyond_the_rate_wait_in_order_and_are_never_refused() -> None:
    # The gate widens the window by at least 1 s: 2 per 1.1 s.
    rate = RateLimit(2, 0.1)
    async with running(rate=rate) as h:
        jobs = [await h.queue() for _ in range(4)]
        for job_id in jobs:
            await h.settled(job_id, states=(JobState.SUBMITTED,))
        assert h.upstream.keys == jobs
        times = [c.at for c in h.upstream.calls]
        for i in range(len(times) - rate.limit):
            assert times[i + rate.limit] - times[i] >= 1.0


async def test_a_retry_goes_out_when_its_backoff_ends_not_at_the_next_idle_poll() -> None:
    async with running() as h:
        h.upstream.script = [failure(503, "service_unavailable")]
        job_id = await h.queue()
        await h.settled(job_id, states=(JobState.SUBMITTED,))
        first, second = (c.at for c in h.upstream.calls)
        assert second - first < IDLE_POLL / 2


# How each job is sent, and how it ends


async def test_a_job_of_a_service_that_never_calls_back_ends_with_the_sync_answer() -> None:
    async with running() as h:
        job_id = await h.queue(Service.EMAIL)
        job = await h.settled(job_id, states=(JobState.SUCCEEDED, JobState.FAILED))
        assert job.state is JobState.SUCCEEDED
        [call] = h.upstream.calls
        assert (call.idempotency_key, call.mode) == (job_id, Mode.SYNC)
        assert job.dispatch_id == "disp_1"
        assert await h.event_types(job_id) == ["queued", states.ATTEMPT, states.COMPLETED]


@pytest.mark.parametrize(
    ("services", "provider", "mode"),
    [
        ((Service.ESIGN,), "", Mode.ASYNC),
        ((Service.POSTAL,), "mysendingbox", Mode.ASYNC),
        ((Service.ESIGN,), "yousign", Mode.SYNC),
        ((Service.POSTAL,), "lob", Mode.SYNC),
        ((Service.FILE, Service.ESIGN), "", Mode.ASYNC),
        ((Service.FILE, Service.EMAIL), "", Mode.SYNC),
        ((Service.SMS,), "", Mode.SYNC),
        ((Service.INVOICING,), "qonto", Mode.SYNC),
    ],
)
async def test_a_job_is_sent_async_only_when_its_service_and_provider_call_back(
    services: tuple[Service, ...], provider: str, mode: Mode
) -> None:
    async with running() as h:
        body = {"template": {"id": 1, "data": {}}} | (
            {"providerName": provider} if provider else {}
        )
        spec = DispatchSpec(services, Mode.ASYNC, body)
        job_id = (await h.gateway.dispatches.submit("anonymous", spec, budget=None)).job_id
        ended = JobState.SUBMITTED if mode is Mode.ASYNC else JobState.SUCCEEDED
        await h.settled(job_id, states=(ended,))
        assert [c.mode for c in h.upstream.calls] == [mode]


async def test_background_sync_calls_are_retried_with_the_same_key_then_end_the_job() -> None:
    async with running() as h:
        h.upstream.script = [failure(503, "service_unavailable"), failure(429, "rate_limited")]
        job_id = await h.queue(Service.SMS)
        job = await h.settled(job_id, states=(JobState.SUCCEEDED, JobState.FAILED))
        assert job.state is JobState.SUCCEEDED
        assert h.upstream.keys == [job_id] * 3
        assert {c.mode for c in h.upstream.calls} == {Mode.SYNC}
        attempts = await h.gateway.reads.attempts(job)
        assert [(a.http_status, a.error_code) for a in attempts] == [
            (503, "service_unavailable"),
            (429, "rate_limited"),
            (200, ""),
        ]
        assert [a.request_id for a in attempts] == [c.request_id for c in h.upstream.calls]


async def test_a_background_sync_call_refused_fails_the_job_with_the_upstreams_error() -> None:
    async with running() as h:
        h.upstream.script = [failure(417, "provider_error")]
        job_id = await h.queue(Service.INVOICING)
        job = await h.settled(job_id, states=(JobState.SUCCEEDED, JobState.FAILED))
        assert job.state is JobState.FAILED
        assert job.error is not None
        assert (job.error.code, job.error.http_status) == ("provider_error", 417)
        assert len(h.upstream.calls) == 1


async def test_slow_sync_calls_are_bounded_and_hold_up_no_async_submission() -> None:
    async with running(sync_concurrency=2) as h:
        h.upstream.sync_gate = asyncio.Event()
        slow = [await h.queue(Service.EMAIL) for _ in range(5)]
        quick = await h.queue(Service.ESIGN)
        await h.settled(quick, states=(JobState.SUBMITTED,))
        assert h.upstream.in_flight == 2  # the other three wait in the outbox, not in memory
        h.upstream.sync_gate.set()
        for job_id in slow:
            await h.settled(job_id, states=(JobState.SUCCEEDED,))
        assert h.upstream.most_in_flight == 2
        assert sorted(h.upstream.keys) == sorted([*slow, quick])


def sync_job(job_id: str, created_at: float) -> tuple[Job, JobEvent]:
    """What a sync call leaves when its process is killed before the upstream answered: the job,
    queued, with its first event (and, created with enqueue=True, its outbox entry)."""
    job = Job(
        job_id=job_id,
        client="anonymous",
        services=(Service.EMAIL,),
        mode=Mode.SYNC,
        state=JobState.QUEUED,
        body={"template": {"id": 1, "data": {}}},
        metadata={},
        idempotency_key="",
        request_hash="",
        created_at=created_at,
        updated_at=created_at,
    )
    first = JobEvent(
        job_id, job.client, Service.EMAIL, "queued", JobState.QUEUED, {}, {}, created_at
    )
    return job, first


async def test_a_sync_job_whose_caller_never_recorded_an_answer_is_sent_by_the_outbox() -> None:
    async with running() as h:
        now = time.time()
        await h.store.create_job(*sync_job("job_fresh", now), enqueue=True)
        await h.store.create_job(*sync_job("job_orphan", now - SYNC_CALL_GRACE), enqueue=True)
        h.gateway.outbox.wake()
        ended = await h.settled("job_orphan", states=(JobState.SUCCEEDED, JobState.FAILED))
        assert ended.state is JobState.SUCCEEDED
        await asyncio.sleep(IDLE_POLL * 1.5)
        # The fresh one is its caller's to send until the call's time is up.
        assert [(c.idempotency_key, c.mode) for c in h.upstream.calls] == [
            ("job_orphan", Mode.SYNC)
        ]


# The callback deadline


SHORT_DEADLINE = CallbackRules(deadlines={Service.ESIGN: 0.3, Service.POSTAL: 0.3})


async def test_a_job_whose_webhook_never_comes_fails_callback_overdue_once() -> None:
    async with running(callbacks=SHORT_DEADLINE) as h:
        job_id = await h.queue(Service.ESIGN)
        job = await h.settled(job_id, states=(JobState.FAILED,))
        assert job.error is not None
        assert job.error.code == states.OVERDUE
        token = TOKENS.token(job_id)
        late = {"event": "document_signed", "dispatchId": job.dispatch_id, "data": {}}
        assert await h.gateway.webhooks.record_webhook(token, late, webhook_id="wh-late")
        await asyncio.sleep(0.5)
        events = await h.store.read_events(client="anonymous", job_id=job_id)
        assert [(e.type, e.terminal) for e in events] == [
            ("queued", False),
            (states.ATTEMPT, False),
            ("submitted", False),
            ("failed", True),
            ("document_signed", False),
        ]
        after = await h.store.get_job(job_id)
        assert after is not None
        assert after.state is JobState.FAILED


async def test_a_job_that_ends_by_webhook_in_time_is_not_overdue() -> None:
    async with running(callbacks=SHORT_DEADLINE) as h:
        job_id = await h.queue(Service.POSTAL)
        await h.settled(job_id, states=(JobState.SUBMITTED,))
        token = TOKENS.token(job_id)
        for n, event in enumerate(["letter_created", "letter_delivered"]):
            await h.gateway.webhooks.record_webhook(token, {"event": event}, webhook_id=f"wh-{n}")
        await asyncio.sleep(0.6)
        assert await h.event_types(job_id) == [
            "queued",
            states.ATTEMPT,
            "submitted",
            "letter_created",
            "letter_delivered",
        ]
        assert await h.store.lease(limit=10, visibility=60.0) == []


async def test_a_rate_slot_gone_stale_before_its_request_leaves_is_taken_again() -> None:
    async with running() as h:
        gate = h.gateway.caller.rate
        taken: list[float] = []
        real_wait = gate.wait

        async def stalled_wait(budget: float | None = None) -> float:
            at = await real_wait(budget)
            taken.append(at)
            if len(taken) == 1:
                # The process stalls (CPU starved, a long GC) after its first slot is taken.
                time.sleep(SLOT_FRESHNESS * 2)
            return at

        gate.wait = stalled_wait  # type: ignore[method-assign]
        job_id = await h.queue(Service.ESIGN)
        await h.settled(job_id, states=(JobState.SUBMITTED,))
        assert len(taken) == 2  # the stale slot is not spent; a fresh one is
        [call] = h.upstream.calls
        assert call.at >= taken[1]  # sent on the fresh slot (the loop's clock is monotonic)


class CountingStore:
    """A real store, with its lease calls and the entries put back counted."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.leases = 0
        self.put_back = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def lease(self, **kwargs: Any) -> Any:
        self.leases += 1
        return await self.inner.lease(**kwargs)

    async def retry_later(self, *args: Any) -> None:
        self.put_back += 1
        await self.inner.retry_later(*args)


async def test_an_open_circuit_holds_the_worker_rather_than_churning_the_backlog() -> None:
    """While the circuit is open, jobs queued one after the other (each waking the worker) are
    not each leased only to be put back for the pause: the worker leases nothing for
    PAUSED_POLL once it found the circuit open. Once the circuit lets calls through, those it
    did not put back for the pause go at once."""
    inner = MemoryStore()
    await inner.open()
    store = CountingStore(inner)
    upstream = ScriptedUpstream()
    gateway = build_core(store, upstream, breaker_threshold=1)
    spec = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1}})
    try:
        async with running_outbox(gateway):
            gateway.caller.breaker.failure()
            assert gateway.caller.paused() > 0
            job_ids = []
            for _ in range(40):
                job_ids.append((await gateway.dispatches.submit("a", spec, budget=None)).job_id)
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)
            # Without the hold: a lease and a put-back for (nearly) every job queued.
            assert store.leases <= 3
            assert 1 <= store.put_back <= 3
            assert upstream.calls == []
            gateway.caller.breaker.success()
            async with asyncio.timeout(PAUSED_POLL + 5.0):
                while len({call.idempotency_key for call in upstream.calls}) < (
                    len(job_ids) - store.put_back
                ):
                    await asyncio.sleep(0.02)
    finally:
        await inner.close()


class OverdueSeen(NoObserver):
    def __init__(self) -> None:
        self.overdue: list[str] = []
        self.ended: list[tuple[str, str]] = []

    def callback_overdue(self, service: str) -> None:
        self.overdue.append(service)

    def job_ended(self, service: str, state: str) -> None:
        self.ended.append((service, state))


class EndsWhileRead:
    """A real store; the job's terminal webhook is recorded (on another replica) while the
    outbox reads the job's events at its deadline, after it found the job still open."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.gateway: Gateway | None = None
        self.job_id = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_events(self, **kwargs: Any) -> Any:
        if self.gateway is not None and kwargs.get("job_id") == self.job_id:
            envelope = {"event": "document_signed", "data": {}}
            token = TOKENS.token(self.job_id)
            await self.gateway.webhooks.record_webhook(token, envelope, webhook_id="wh-end")
        return await self.inner.read_events(**kwargs)


async def test_a_webhook_ending_the_job_at_its_deadline_is_not_counted_overdue() -> None:
    inner = MemoryStore()
    await inner.open()
    store, seen = EndsWhileRead(inner), OverdueSeen()
    gateway = build_core(store, ScriptedUpstream(), callbacks=SHORT_DEADLINE, observer=seen)
    spec = DispatchSpec((Service.ESIGN,), Mode.ASYNC, {"template": {"id": 1}})
    try:
        async with running_outbox(gateway):
            job_id = (await gateway.dispatches.submit("anonymous", spec, budget=None)).job_id
            async with asyncio.timeout(WAIT_TIMEOUT):
                while (job := await inner.get_job(job_id)) and job.state is JobState.QUEUED:
                    await asyncio.sleep(0.01)
            store.job_id, store.gateway = job_id, gateway
            # The deadline comes: the outbox writes its failure after the end.
            async with asyncio.timeout(WAIT_TIMEOUT):
                while "failed" not in [
                    e.type for e in await inner.read_events(client="anonymous", job_id=job_id)
                ]:
                    await asyncio.sleep(0.01)
        ended = await inner.get_job(job_id)
        assert ended is not None
        assert ended.state is JobState.SUCCEEDED
        assert seen.ended == [("esign", "succeeded")]
        assert seen.overdue == []
    finally:
        await inner.close()
