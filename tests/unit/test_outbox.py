"""The outbox's rules, on the real SQLite store with a scripted upstream: what is retried and what
fails at once, the give-up age, Retry-After, and async jobs beyond the rate waiting in order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dispatcher_gateway.core.breaker import CircuitBreaker
from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.core.hub import EventHub
from dispatcher_gateway.core.model import (
    JSON,
    DispatchSpec,
    Job,
    JobState,
    Mode,
    Service,
    UpstreamFailure,
)
from dispatcher_gateway.core.outbox import IDLE_POLL, OutboxWorker
from dispatcher_gateway.core.retry import RateLimit, RetryPolicy
from dispatcher_gateway.core.service import Gateway, RateGate
from dispatcher_gateway.core.tokens import CallbackTokens
from dispatcher_gateway.store.sqlite import SqliteStore

FAST = RetryPolicy(base=0.01, cap=0.02, give_up_after=60.0)
"""Retries within 20 ms: a wait much longer than that can only be the upstream's Retry-After."""
WAIT_TIMEOUT = 10.0
Outcome = JSON | UpstreamError


def failure(status: int, code: str, *, retry_after: float | None = None) -> UpstreamError:
    body = {"error": code, "message": f"{code} happened", "details": {"field": "email.to"}}
    return UpstreamError(
        UpstreamFailure(code, f"{code} happened", status, body if status else {}),
        retryable=status in (0, 429) or status >= 500,
        timeout=code == "upstream_timeout",
        retry_after=retry_after,
    )


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
class ScriptedUpstream:
    """core.ports.Upstream answering dispatches from a script (then 202s), noting each call."""

    script: list[Outcome] = field(default_factory=list)
    otherwise: Callable[[], Outcome] = lambda: {"status": "queued"}
    calls: list[tuple[str, float]] = field(default_factory=list)

    async def dispatch(
        self, spec: DispatchSpec, *, idempotency_key: str, callback_url: str | None, timeout: float
    ) -> JSON:
        self.calls.append((idempotency_key, time.monotonic()))
        outcome = self.script.pop(0) if self.script else self.otherwise()
        if isinstance(outcome, UpstreamError):
            raise outcome
        return {"dispatchId": f"disp_{len(self.calls)}", **outcome}

    async def validate(self, spec: DispatchSpec, *, timeout: float) -> JSON:
        return {"valid": True}

    async def templates(self, *, timeout: float) -> list[JSON]:
        return []

    async def close(self) -> None:
        return None


@dataclass
class Harness:
    store: SqliteStore
    upstream: ScriptedUpstream
    gateway: Gateway

    async def queue(self) -> str:
        spec = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1, "data": {}}})
        return (await self.gateway.submit("anonymous", spec, budget=None)).job_id

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


UNLIMITED = RateLimit(1000, 1.0)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, policy: RetryPolicy = FAST, rate: RateLimit = UNLIMITED
) -> AsyncIterator[Harness]:
    store = SqliteStore(tmp_path / "outbox.db")
    await store.open()
    upstream = ScriptedUpstream()
    gateway = Gateway(
        store,
        upstream,
        CallbackTokens(b"k" * 32),
        public_url="https://gw.example",
        rate=RateGate(store, rate),
        hub=EventHub(),
        # The breaker has its own tests; here it must not pause the rules under test.
        breaker=CircuitBreaker(threshold=1_000_000),
    )
    worker = OutboxWorker(gateway, store, policy, submit_timeout=5.0)
    gateway.on_queued = worker.wake
    task = asyncio.create_task(worker.run())
    try:
        yield Harness(store, upstream, gateway)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


@pytest.mark.parametrize("error", RETRIED.values(), ids=RETRIED.keys())
async def test_transient_failures_are_retried_with_the_same_idempotency_key(
    tmp_path: Path, error: UpstreamError
) -> None:
    async with running(tmp_path) as h:
        h.upstream.script = [error, error]
        job_id = await h.queue()
        job = await h.settled(job_id, states=(JobState.SUBMITTED, JobState.FAILED))
        assert job.state is JobState.SUBMITTED
        assert [key for key, _ in h.upstream.calls] == [job_id] * 3
        assert await h.event_types(job_id) == ["queued", "submitted"]


@pytest.mark.parametrize("error", FINAL.values(), ids=FINAL.keys())
async def test_other_4xx_fail_the_job_at_once_with_the_upstreams_error(
    tmp_path: Path, error: UpstreamError
) -> None:
    async with running(tmp_path) as h:
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
        assert [e.type for e in events] == ["queued", "failed"]
        assert events[-1].terminal
        assert events[-1].data["http_status"] == error.failure.http_status
        assert events[-1].data["details"] == error.failure.details
        await asyncio.sleep(0.1)  # and nothing is sent again
        assert len(h.upstream.calls) == 1


async def test_a_job_past_its_give_up_age_fails_with_its_last_error(tmp_path: Path) -> None:
    policy = RetryPolicy(base=0.01, cap=0.02, give_up_after=0.3)
    async with running(tmp_path, policy) as h:
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
        assert await h.event_types(job_id) == ["queued", "failed"]
        tries = len(h.upstream.calls)
        await asyncio.sleep(0.1)
        assert len(h.upstream.calls) == tries  # given up: never sent again


async def test_retry_after_is_honoured_over_a_shorter_backoff(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.upstream.script = [failure(429, "rate_limited", retry_after=0.5)]
        job_id = await h.queue()
        await h.settled(job_id, states=(JobState.SUBMITTED,))
        (_, first), (_, second) = h.upstream.calls
        assert second - first >= 0.5


async def test_async_jobs_beyond_the_rate_wait_in_order_and_are_never_refused(
    tmp_path: Path,
) -> None:
    # The gate widens the window by at least 1 s: 2 per 1.1 s.
    rate = RateLimit(2, 0.1)
    async with running(tmp_path, rate=rate) as h:
        jobs = [await h.queue() for _ in range(4)]
        for job_id in jobs:
            await h.settled(job_id, states=(JobState.SUBMITTED,))
        assert [key for key, _ in h.upstream.calls] == jobs
        times = [t for _, t in h.upstream.calls]
        for i in range(len(times) - rate.limit):
            assert times[i + rate.limit] - times[i] >= 1.0


async def test_a_retry_goes_out_when_its_backoff_ends_not_at_the_next_idle_poll(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        h.upstream.script = [failure(503, "service_unavailable")]
        job_id = await h.queue()
        await h.settled(job_id, states=(JobState.SUBMITTED,))
        (_, first), (_, second) = h.upstream.calls
        assert second - first < IDLE_POLL / 2
