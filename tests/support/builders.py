"""Jobs and events to feed a store, and small helpers for the contract tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.model import JSON, Job, JobEvent, JobState, Mode, Priority, Service
from dispatcher_gateway.core.ports import Store

StoreFactory = Callable[[], Store]
"""Makes an unopened store; every store one factory makes sees the same data, so a test can
close a store and open another over what the first one wrote."""

Elapse = Callable[[float], Awaitable[None]]
"""Lets time pass for the test's stores: their clock moves on at once, and real time passes too
for a backend whose server keeps the outbox's times by a timer of its own, or that times the rate
limit by the real time."""


@dataclass(frozen=True)
class Backend:
    factory: Callable[[pytest.FixtureRequest, ManualClock], StoreFactory]
    """Gives the test's store factory, its stores on the test's clock; it may ask the request
    for fixtures of its own (e.g. a session-wide server)."""
    server_lag: float | None = None
    """For a backend whose server hands out leased and retried entries by its own real-time
    timer: how long after the store's clock says so, at most. None: the store's clock alone
    decides."""
    wall_clock_rate: bool = False
    """Whether the backend times the rate limit by the real time rather than its clock."""


CLIENT = "billing"
OTHER_CLIENT = "crm"
WAIT = 5.0
"""The longest a test waits for something that should happen at once."""


class ManualClock:
    """A store's clock that stands still until the test moves it; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_job(
    client: str = CLIENT,
    *,
    key: str = "",
    created_at: float | None = None,
    job_id: str | None = None,
    priority: Priority = Priority.NORMAL,
) -> Job:
    now = time.time() if created_at is None else created_at
    return Job(
        job_id=job_id or f"job-{uuid.uuid4().hex}",
        client=client,
        services=(Service.FILE, Service.EMAIL),
        mode=Mode.ASYNC,
        state=JobState.QUEUED,
        body={"email": {"to": ["a@example.com"]}, "count": 3},
        metadata={"tenant": "acme"},
        idempotency_key=key,
        request_hash="hash-1",
        created_at=now,
        updated_at=now,
        priority=priority,
    )


def event_for(job: Job, type: str = "letter_created", *, data: JSON | None = None) -> JobEvent:
    return JobEvent(
        job_id=job.job_id,
        client=job.client,
        service=job.service,
        type=type,
        state=states.state_for(type),
        data=data if data is not None else {"n": 1},
        metadata=dict(job.metadata),
        event_time=time.time(),
    )


def queued_event(job: Job) -> JobEvent:
    return event_for(job, states.QUEUED, data={})


async def create(
    store: Store, client: str = CLIENT, *, key: str = "", enqueue: bool = False, **changes: Any
) -> Job:
    """A new job, stored with its first event; returns it as stored."""
    job = new_job(client, key=key, **changes)
    stored, created = await store.create_job(job, queued_event(job), enqueue=enqueue)
    assert created
    return stored


async def append(
    store: Store, job: Job, type: str = "letter_created", *, dedupe_key: str | None = None
) -> JobEvent:
    recorded = await store.append_event(
        event_for(job, type), dedupe_key=dedupe_key, apply=states.apply_event
    )
    assert recorded is not None
    return recorded


@contextlib.asynccontextmanager
async def opened(new_store: StoreFactory) -> AsyncIterator[Store]:
    store = new_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def tailing(store: Store, after: str) -> AsyncIterator[AsyncIterator[JobEvent]]:
    """A tail that is closed on exit, whatever kind of async iterator the backend gives."""
    tail = store.tail(after=after)
    try:
        yield tail
    finally:
        aclose = getattr(tail, "aclose", None)
        if aclose is not None:
            await aclose()


async def take(tail: AsyncIterator[JobEvent], count: int) -> list[JobEvent]:
    async with asyncio.timeout(WAIT):
        return [await anext(tail) for _ in range(count)]


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)
