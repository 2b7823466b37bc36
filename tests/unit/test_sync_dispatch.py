"""A sync dispatch records its outcome even when gRPC cancels the call (deadline, caller gone)
while that record is being written: otherwise the job would stay queued for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.core.model import (
    JSON,
    DispatchSpec,
    Job,
    JobState,
    Mode,
    Service,
    UpstreamFailure,
)
from dispatcher_gateway.core.ports import NoObserver
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import TOKENS, build_core
from ..support.upstream import ScriptedUpstream, failure

APPEND_DELAY = 0.2
WAIT_TIMEOUT = 5.0


class SlowAnswers:
    """The real store, but every events append, once written, takes a while to answer."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.appended = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append_events(self, events: Any, **kwargs: Any) -> Any:
        recorded = await self._store.append_events(events, **kwargs)
        self.appended.set()
        await asyncio.sleep(APPEND_DELAY)
        return recorded


class EndsSeen(NoObserver):
    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []

    def job_ended(self, service: str, state: str) -> None:
        self.ended.append((service, state))


class SlowAppends:
    """The real store, but every event append takes a while before it starts."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.appending = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append_event(self, event: Any, **kwargs: Any) -> Any:
        self.appending.set()
        await asyncio.sleep(APPEND_DELAY)
        return await self._store.append_event(event, **kwargs)

    async def append_events(self, events: Any, **kwargs: Any) -> Any:
        self.appending.set()
        await asyncio.sleep(APPEND_DELAY)
        return await self._store.append_events(events, **kwargs)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    store = MemoryStore()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def cancelled_while_recording(store: MemoryStore, outcome: JSON | UpstreamError) -> Job:
    """Run a sync dispatch, cancel it while its outcome is being appended, return the job."""
    slow = SlowAppends(store)
    gateway = build_core(slow, ScriptedUpstream(script=[outcome]))
    spec = DispatchSpec((Service.EMAIL,), Mode.SYNC, {"template": {"id": 1, "data": {}}})
    # The job's first event is appended too: wait for the second append, the outcome.
    call = asyncio.create_task(gateway.dispatches.submit("anonymous", spec, budget=10.0))
    async with asyncio.timeout(WAIT_TIMEOUT):
        while True:
            await slow.appending.wait()
            slow.appending.clear()
            jobs, _ = await store.list_jobs("anonymous", limit=1)
            if jobs:
                break
    call.cancel()
    with pytest.raises((asyncio.CancelledError, UpstreamError)):
        await call
    async with asyncio.timeout(WAIT_TIMEOUT):
        while (job := (await store.list_jobs("anonymous", limit=1))[0][0]).state is JobState.QUEUED:
            await asyncio.sleep(0.01)
    return job


async def test_an_upstream_failure_is_recorded_though_the_call_is_cancelled(
    store: MemoryStore,
) -> None:
    failure = UpstreamFailure("upstream_timeout", "no answer within 1 s")
    job = await cancelled_while_recording(store, UpstreamError(failure, retryable=True))
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.code == "upstream_timeout"


async def test_an_upstream_success_is_recorded_though_the_call_is_cancelled(
    store: MemoryStore,
) -> None:
    job = await cancelled_while_recording(store, {"dispatchId": "disp_1", "status": "completed"})
    assert job.state is JobState.SUCCEEDED
    assert job.dispatch_id == "disp_1"


async def test_an_answer_recorded_as_the_call_is_cancelled_is_recorded_and_counted_once(
    store: MemoryStore,
) -> None:
    slow, seen = SlowAnswers(store), EndsSeen()
    answer = {"dispatchId": "disp_1", "status": "completed"}
    gateway = build_core(slow, ScriptedUpstream(script=[answer]), observer=seen)
    spec = DispatchSpec((Service.EMAIL,), Mode.SYNC, {"template": {"id": 1, "data": {}}})
    call = asyncio.create_task(gateway.dispatches.submit("anonymous", spec, budget=10.0))
    async with asyncio.timeout(WAIT_TIMEOUT):
        await slow.appended.wait()  # written, not yet answered

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async with asyncio.timeout(WAIT_TIMEOUT):
        while not seen.ended:  # a shielded record may still be on its way
            await asyncio.sleep(0.01)
    await asyncio.sleep(APPEND_DELAY * 2)
    [job], _ = await store.list_jobs("anonymous", limit=10)
    events = await store.read_events(client="anonymous", job_id=job.job_id)
    assert job.state is JobState.SUCCEEDED
    assert [e.type for e in events].count("dispatch_completed") == 1
    assert seen.ended == [("email", "succeeded")]


async def test_a_called_back_job_whose_acceptance_times_out_is_ended_by_its_webhook(
    store: MemoryStore,
) -> None:
    """esign in MODE_SYNC, sent, no answer in time: the upstream may have accepted it, so the
    job is not failed; its webhook ends it (once)."""
    gateway = build_core(store, ScriptedUpstream(script=[failure(0, "upstream_timeout")]))
    spec = DispatchSpec((Service.ESIGN,), Mode.SYNC, {"template": {"id": 1, "data": {}}})
    with pytest.raises(UpstreamError) as info:
        await gateway.dispatches.submit("anonymous", spec, budget=10.0)
    assert info.value.failure.code == "upstream_timeout"
    [job], _ = await store.list_jobs("anonymous", limit=10)
    assert job.state is JobState.QUEUED  # the outbox's, once the call's time is up

    envelope = {"event": "document_signed", "dispatchId": "disp_1", "data": {}}
    await gateway.webhooks.record_webhook(TOKENS.token(job.job_id), envelope, webhook_id="wh-1")

    events = await store.read_events(client="anonymous", job_id=job.job_id)
    assert [(e.type, e.terminal) for e in events] == [
        ("queued", False),
        ("upstream_attempt", False),
        ("document_signed", True),
    ]
