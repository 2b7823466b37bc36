"""rpc/limits: per-client Dispatch rate (a token bucket), queued jobs and open streams, each
refused as RateLimited with the time to retry in."""

from __future__ import annotations

import pytest

from dispatcher_gateway.core.errors import RateLimited
from dispatcher_gateway.core.model import JobEvent, JobState, Service
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.rpc.limits import ClientLimits, ClientQuotas


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(job_id: str, state: JobState, client: str = "alice") -> JobEvent:
    return JobEvent(
        job_id=job_id,
        client=client,
        service=Service.EMAIL,
        type=state.value,
        state=state,
        data={},
        metadata={},
        event_time=0.0,
    )


def test_dispatches_beyond_the_burst_wait_for_the_bucket() -> None:
    clock = Clock()
    limits = ClientLimits(ClientQuotas(dispatch_rate=RateLimit(2, 1.0)), clock=clock)
    limits.take_dispatch("alice")
    limits.take_dispatch("alice")
    with pytest.raises(RateLimited) as info:
        limits.take_dispatch("alice")
    assert info.value.retry_after == pytest.approx(0.5)
    assert "'alice'" in str(info.value)
    limits.take_dispatch("bob")  # a bucket of its own
    clock.now += 0.5
    limits.take_dispatch("alice")


def test_streams_beyond_the_limit_are_refused_until_one_ends() -> None:
    limits = ClientLimits(ClientQuotas(max_streams=2))
    with limits.stream("alice"), limits.stream("alice"):
        with pytest.raises(RateLimited) as info, limits.stream("alice"):
            pass
        assert info.value.retry_after > 0
        with limits.stream("bob"):
            pass
    with limits.stream("alice"):
        pass


def test_queued_jobs_count_until_their_first_event_past_queued() -> None:
    limits = ClientLimits(ClientQuotas(max_queued=2))
    limits.queued("alice", "job_1")
    limits.queued("alice", "job_2")
    with pytest.raises(RateLimited) as info:
        limits.check_queue("alice")
    assert info.value.retry_after > 0
    limits.check_queue("bob")
    limits.observe(event("job_1", JobState.QUEUED))
    assert limits.waiting("alice") == 2
    limits.observe(event("job_1", JobState.SUBMITTED))
    assert limits.waiting("alice") == 1
    limits.check_queue("alice")


def test_a_job_that_moved_on_before_its_call_returned_is_not_counted() -> None:
    limits = ClientLimits()
    limits.observe(event("job_fast", JobState.SUCCEEDED))
    limits.queued("alice", "job_fast")
    assert limits.waiting("alice") == 0
