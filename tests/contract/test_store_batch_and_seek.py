"""Issue 14's parts of the contract: many jobs created in one call (DispatchBatch), a job's
scheduled time kept with it (not_before), and where the events recorded since a time start
(Subscribe's start_time)."""

from __future__ import annotations

import asyncio
import time

from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.core.schedule import ScheduleRules
from tests.support.builders import (
    CLIENT,
    OTHER_CLIENT,
    Elapse,
    append,
    create,
    new_job,
    queued_event,
)

LONG = 30.0
BATCH = 100
"""The gateway's default batch limit."""
GAP = 0.05
"""Seconds between two records a seek tells apart: the store's clock reads them apart."""


async def test_create_jobs_creates_each_with_its_event_and_outbox_entry(
    store: Store,
) -> None:
    jobs = [new_job(key=f"k-{i}" if i % 3 == 0 else "") for i in range(BATCH)]

    results = await store.create_jobs([(j, queued_event(j)) for j in jobs], enqueue=True)

    assert results == [(j, True) for j in jobs]
    events = await store.read_events(client=CLIENT, limit=1000)
    assert sorted(e.job_id for e in events) == sorted(j.job_id for j in jobs)
    leases = await store.lease(limit=1000, visibility=LONG)
    assert sorted(lease.job_id for lease in leases) == sorted(j.job_id for j in jobs)


async def test_create_jobs_finds_the_job_of_a_key_used_before_or_earlier_in_the_call(
    store: Store,
) -> None:
    earlier = await create(store, key="order-1")
    again, fresh, same = new_job(key="order-1"), new_job(key="order-2"), new_job(key="order-2")

    results = await store.create_jobs(
        [(j, queued_event(j)) for j in (again, fresh, same)], enqueue=False
    )

    assert results == [(earlier, False), (fresh, True), (fresh, False)]
    assert await store.get_job(same.job_id) is None
    assert len(await store.read_events(client=CLIENT)) == 2


async def test_create_jobs_of_several_clients_keeps_their_keys_apart(store: Store) -> None:
    mine, theirs = new_job(CLIENT, key="k"), new_job(OTHER_CLIENT, key="k")

    results = await store.create_jobs([(j, queued_event(j)) for j in (mine, theirs)], enqueue=False)

    assert results == [(mine, True), (theirs, True)]


async def test_create_jobs_of_nothing_is_nothing(store: Store) -> None:
    assert await store.create_jobs([], enqueue=True) == []


async def test_an_entry_put_back_as_far_as_the_schedule_horizon_is_not_handed_out(
    store: Store, elapse: Elapse
) -> None:
    await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)

    await store.retry_later(lease, ScheduleRules().horizon)

    for _ in range(3):
        await elapse(0.2)
        assert await store.lease(limit=10, visibility=LONG) == []


async def test_a_jobs_scheduled_time_reads_back(store: Store) -> None:
    at = time.time() + 3600.0
    one = new_job().replace(not_before=at)
    two = new_job(key="k").replace(not_before=at + 1)
    await store.create_job(one, queued_event(one), enqueue=True)
    await store.create_jobs([(two, queued_event(two))], enqueue=True)

    assert (await store.get_job(one.job_id)) == one
    assert (await store.get_job(two.job_id)) == two
    listed, _ = await store.list_jobs(CLIENT, limit=10)
    assert {j.not_before for j in listed} == {at, at + 1}


async def test_cursor_before_a_time_gives_exactly_the_events_recorded_since(
    store: Store,
) -> None:
    job = await create(store)
    await append(store, job)
    await asyncio.sleep(GAP)
    since = time.time()
    await asyncio.sleep(GAP)
    later = [await append(store, job, "letter_in_transit"), await append(store, job)]

    after = await store.cursor_before(since)

    assert await store.read_events(client=CLIENT, after=after) == later


async def test_cursor_before_a_time_before_every_event_is_the_start(store: Store) -> None:
    job = await create(store)

    assert await store.cursor_before(time.time() - 3600.0) == ""
    assert await store.cursor_before(0.0) == ""
    [first] = await store.read_events(client=CLIENT)
    assert first.job_id == job.job_id


async def test_cursor_before_a_time_after_every_event_is_the_newest(store: Store) -> None:
    assert await store.cursor_before(time.time()) == ""
    job = await create(store)
    await append(store, job)
    await asyncio.sleep(GAP)

    after = await store.cursor_before(time.time())

    assert after == await store.last_cursor()
    assert await store.read_events(client=CLIENT, after=after) == []
