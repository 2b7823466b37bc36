"""The writes a sync dispatch waits for, each as one call: the job with its rate slot, and the
upstream's answer with its attempt."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import NotFound
from dispatcher_gateway.core.model import JobState
from dispatcher_gateway.core.ports import Store
from tests.support.builders import CLIENT, create, event_for, new_job, queued_event

WINDOW = 10.0
"""A window no test waits out."""


async def test_create_taking_slot_creates_queues_and_takes_a_slot(store: Store) -> None:
    job = new_job()

    stored, created, wait = await store.create_job_taking_slot(
        job, queued_event(job), limit=2, window=WINDOW
    )

    assert created
    assert stored == job
    assert wait == 0.0
    assert [e.type for e in await store.read_events(client=CLIENT)] == [states.QUEUED]
    assert [lease.job_id for lease in await store.lease(limit=10, visibility=WINDOW)] == [
        job.job_id
    ]
    # The slot counts against the limit as acquire_rate's do.
    assert await store.acquire_rate(limit=2, window=WINDOW) == 0.0
    assert await store.acquire_rate(limit=2, window=WINDOW) > 0.0


async def test_create_taking_slot_past_the_limit_creates_and_says_how_long_to_wait(
    store: Store,
) -> None:
    await store.acquire_rate(limit=1, window=WINDOW)
    job = new_job()

    _, created, wait = await store.create_job_taking_slot(
        job, queued_event(job), limit=1, window=WINDOW
    )

    assert created
    assert 0.0 < wait <= WINDOW
    assert await store.get_job(job.job_id) == job


async def test_create_taking_slot_finds_the_job_of_a_key_and_takes_a_slot_all_the_same(
    store: Store,
) -> None:
    first, second = new_job(key="order-7"), new_job(key="order-7")
    await store.create_job(first, queued_event(first), enqueue=False)

    stored, created, wait = await store.create_job_taking_slot(
        second, queued_event(second), limit=1, window=WINDOW
    )

    assert (stored, created, wait) == (first, False, 0.0)
    assert await store.get_job(second.job_id) is None
    assert await store.acquire_rate(limit=1, window=WINDOW) > 0.0


async def test_concurrent_creates_taking_slots_take_exactly_limit(store: Store) -> None:
    jobs = [new_job() for _ in range(8)]

    made = await asyncio.gather(
        *(store.create_job_taking_slot(j, queued_event(j), limit=3, window=WINDOW) for j in jobs)
    )

    assert all(created for _, created, _ in made)
    assert [wait for _, _, wait in made].count(0.0) == 3
    assert len(await store.read_events(client=CLIENT)) == 8


async def test_create_taking_slot_refuses_a_limit_below_one(store: Store) -> None:
    job = new_job()

    with pytest.raises(ValueError, match="limit"):
        await store.create_job_taking_slot(job, queued_event(job), limit=0, window=WINDOW)


async def test_append_events_records_each_in_order_as_append_event_would(store: Store) -> None:
    job = await create(store)
    sent = [event_for(job, states.ATTEMPT), event_for(job, states.COMPLETED)]

    recorded = await store.append_events(
        [(sent[0], "attempt-1"), (sent[1], "sync-1")], apply=states.apply_event
    )

    assert [e.type for e in recorded if e is not None] == [states.ATTEMPT, states.COMPLETED]
    assert recorded == (await store.read_events(client=CLIENT, job_id=job.job_id))[1:]
    assert recorded[1] is not None
    assert recorded[1].terminal
    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is JobState.SUCCEEDED


async def test_append_events_gives_none_for_each_duplicate(store: Store) -> None:
    job = await create(store)
    await store.append_event(
        event_for(job, states.ATTEMPT), dedupe_key="attempt-1", apply=states.apply_event
    )

    recorded = await store.append_events(
        [(event_for(job, states.ATTEMPT), "attempt-1"), (event_for(job), "webhook-1")],
        apply=states.apply_event,
    )

    assert recorded[0] is None
    assert recorded[1] is not None
    assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 3


async def test_append_events_to_an_unknown_job_is_not_found(store: Store) -> None:
    job = new_job()

    with pytest.raises(NotFound):
        await store.append_events([(event_for(job), "webhook-1")], apply=states.apply_event)
