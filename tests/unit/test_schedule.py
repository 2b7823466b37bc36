"""Scheduled jobs (`not_before`): when one may be asked for, and the outbox holding it until its
time, on the in-memory store with a scripted upstream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core.errors import IdempotencyConflict, InvalidArgument
from dispatcher_gateway.core.gateway import Gateway
from dispatcher_gateway.core.model import DispatchSpec, Job, JobState, Mode, Service
from dispatcher_gateway.core.retry import RetryPolicy
from dispatcher_gateway.core.schedule import ScheduleRules
from dispatcher_gateway.rpc.convert import job_to_pb, spec_from_request
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import NEVER_OPENS, build_core, running_outbox
from ..support.upstream import FAST, ScriptedUpstream, failure

WAIT = 10.0
BODY = {"template": {"id": 1, "data": {}}}


def scheduled(at: float, mode: Mode = Mode.ASYNC) -> DispatchSpec:
    return DispatchSpec((Service.ESIGN,), mode, BODY, not_before=at)


@contextlib.asynccontextmanager
async def running(
    policy: RetryPolicy = FAST,
) -> AsyncIterator[tuple[Gateway, MemoryStore, ScriptedUpstream]]:
    store = MemoryStore()
    await store.open()
    upstream = ScriptedUpstream()
    gateway = build_core(store, upstream, retry=policy, breaker_threshold=NEVER_OPENS)
    try:
        async with running_outbox(gateway):
            yield gateway, store, upstream
    finally:
        await store.close()


async def settled(store: MemoryStore, job_id: str) -> Job:
    async with asyncio.timeout(WAIT):
        while True:
            job = await store.get_job(job_id)
            assert job is not None
            if job.state is not JobState.QUEUED:
                return job
            await asyncio.sleep(0.01)


async def test_a_scheduled_job_is_sent_no_earlier_than_its_time() -> None:
    async with running() as (gateway, store, upstream):
        at = time.time() + 0.5
        job = await gateway.dispatches.submit("anonymous", scheduled(at), budget=None)
        assert (job.state, job.not_before) == (JobState.QUEUED, at)

        done = await settled(store, job.job_id)

        assert done.state is JobState.SUBMITTED
        [attempt] = await gateway.records.attempts(done)
        assert attempt.time >= at
        assert upstream.keys == [job.job_id]


async def test_a_job_waiting_for_its_time_is_not_handed_out_again_until_then() -> None:
    async with running() as (gateway, store, upstream):
        job = await gateway.dispatches.submit(
            "anonymous", scheduled(time.time() + 3600), budget=None
        )
        await asyncio.sleep(1.5)  # more than the outbox's idle poll

        assert upstream.calls == []
        assert await store.lease(limit=10, visibility=60.0) == []
        assert (await store.get_job(job.job_id)) == job


async def test_a_scheduled_job_is_retried_for_the_give_up_age_from_its_time() -> None:
    # Created 0.4 s before its time, past a give-up age of 0.3 s: the age runs from its time.
    policy = RetryPolicy(base=0.01, cap=0.02, give_up_after=0.3)
    async with running(policy) as (gateway, store, upstream):
        upstream.script = [failure(503, "service_unavailable")]
        job = await gateway.dispatches.submit(
            "anonymous", scheduled(time.time() + 0.4), budget=None
        )

        done = await settled(store, job.job_id)

        assert done.state is JobState.SUBMITTED
        assert upstream.keys == [job.job_id] * 2


async def test_a_time_a_little_in_the_past_is_taken_as_now() -> None:
    async with running() as (gateway, store, _):
        job = await gateway.dispatches.submit(
            "anonymous", scheduled(time.time() - 2.0), budget=None
        )
        assert (await settled(store, job.job_id)).state is JobState.SUBMITTED


async def test_a_keyed_call_retried_after_its_time_gets_the_job_it_made() -> None:
    """A client whose answer was lost calls again with the same key once the time has passed:
    the job made the first time is its answer, not a refusal of a time now in the past."""
    async with running() as (gateway, store, upstream):
        gateway.dispatches.schedule = ScheduleRules(skew=0.1)
        spec = dataclasses.replace(scheduled(time.time() + 0.2), idempotency_key="order-1")
        job = await gateway.dispatches.submit("anonymous", spec, budget=None)
        await settled(store, job.job_id)
        await asyncio.sleep(0.4)  # its time and the skew are past

        again = await gateway.dispatches.submit("anonymous", spec, budget=None)
        [(in_batch, estimate)] = await gateway.dispatches.submit_batch("anonymous", [spec])

        assert again.job_id == job.job_id
        assert again.state is JobState.SUBMITTED
        assert (getattr(in_batch, "job_id", None), estimate) == (job.job_id, None)
        assert upstream.keys == [job.job_id]
        other = dataclasses.replace(spec, body={"template": {"id": 2, "data": {}}})
        with pytest.raises(IdempotencyConflict):
            await gateway.dispatches.submit("anonymous", other, budget=None)
        unkeyed = dataclasses.replace(spec, idempotency_key="")
        with pytest.raises(InvalidArgument):
            await gateway.dispatches.submit("anonymous", unkeyed, budget=None)


@pytest.mark.parametrize(
    ("offset", "words"),
    [(-60.0, "in the past"), (ScheduleRules().horizon + 60.0, "horizon")],
    ids=["past beyond the skew", "beyond the horizon"],
)
async def test_a_time_too_far_back_or_ahead_is_refused_naming_the_field(
    offset: float, words: str
) -> None:
    async with running() as (gateway, store, _):
        with pytest.raises(InvalidArgument) as caught:
            await gateway.dispatches.submit(
                "anonymous", scheduled(time.time() + offset), budget=None
            )
        [violation] = caught.value.violations
        assert violation.field == "not_before"
        assert words in violation.description
        assert (await store.list_jobs("anonymous", limit=10))[0] == []


def test_the_skew_and_horizon_are_settings() -> None:
    rules = ScheduleRules(skew=1.0, horizon=100.0)
    rules.check(1000.0 - 1.0, 1000.0)
    rules.check(1000.0 + 100.0, 1000.0)
    with pytest.raises(InvalidArgument):
        rules.check(1000.0 - 1.5, 1000.0)
    with pytest.raises(InvalidArgument):
        rules.check(1000.0 + 100.5, 1000.0)


def _request(mode: pb.Mode.ValueType, seconds: int) -> pb.DispatchRequest:
    request = pb.DispatchRequest(service=pb.SERVICE_SMS, mode=mode)
    request.template.id = 1
    request.sms.to.append("+33600000000")
    request.not_before.seconds = seconds
    return request


def test_not_before_is_for_async_requests_only() -> None:
    with pytest.raises(InvalidArgument) as caught:
        spec_from_request(_request(pb.MODE_SYNC, int(time.time()) + 60))
    assert [v.field for v in caught.value.violations] == ["not_before"]


def test_not_before_is_read_from_the_request_and_returned_with_the_job() -> None:
    at = int(time.time()) + 60
    spec = spec_from_request(_request(pb.MODE_ASYNC, at))
    assert spec.not_before == at
    job = Job(
        "job_1", "c", spec.services, spec.mode, JobState.QUEUED, spec.body, {}, "", "", 1.0, 1.0,
        not_before=spec.not_before,
    )  # fmt: skip
    assert job_to_pb(job).not_before.seconds == at
    unscheduled = job.replace(not_before=0.0)
    assert not job_to_pb(unscheduled).HasField("not_before")


def test_the_same_request_scheduled_at_another_time_is_another_request() -> None:
    assert scheduled(100.0).fingerprint() != scheduled(200.0).fingerprint()
    assert (
        scheduled(0.0).fingerprint()
        == DispatchSpec((Service.ESIGN,), Mode.ASYNC, BODY).fingerprint()
    )
