"""What a store wrote is there after it is closed and opened again."""

from __future__ import annotations

from dispatcher_gateway.core import states
from tests.support.builders import (
    CLIENT,
    Elapse,
    StoreFactory,
    append,
    create,
    event_for,
    new_job,
    opened,
    queued_event,
)


async def test_jobs_survive_reopening(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        job = await create(store, key="order-1")
        await append(store, job, states.COMPLETED)
        stored = await store.get_job(job.job_id)

    async with opened(new_store) as store:
        assert await store.get_job(job.job_id) == stored
        assert await store.list_jobs(CLIENT, limit=10) == ([stored], "")


async def test_idempotency_keys_survive_reopening(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        job = await create(store, key="order-1")

    async with opened(new_store) as store:
        retry = new_job(key="order-1")
        stored, created = await store.create_job(retry, queued_event(retry), enqueue=False)

    assert (stored.job_id, created) == (job.job_id, False)


async def test_events_survive_reopening_and_cursors_keep_increasing(
    new_store: StoreFactory,
) -> None:
    async with opened(new_store) as store:
        job = await create(store)
        before = [await append(store, job) for _ in range(2)]
        events = await store.read_events(client=CLIENT)

    async with opened(new_store) as store:
        assert await store.read_events(client=CLIENT) == events
        assert await store.last_cursor() == before[-1].cursor
        after = await append(store, job)

    assert int(after.cursor) > int(before[-1].cursor)


async def test_dedupe_keys_survive_reopening(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        job = await create(store)
        await append(store, job, dedupe_key="wh-1")

    async with opened(new_store) as store:
        again = await store.append_event(
            event_for(job), dedupe_key="wh-1", apply=states.apply_event
        )

    assert again is None


async def test_outbox_entries_and_attempts_survive_reopening(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        job = await create(store, enqueue=True)
        [lease] = await store.lease(limit=10, visibility=30.0)
        await store.retry_later(lease, 0.0)

    async with opened(new_store) as store:
        [again] = await store.lease(limit=10, visibility=30.0)

    assert (again.job_id, again.attempts) == (job.job_id, 1)


async def test_a_lease_taken_before_reopening_still_expires(
    new_store: StoreFactory, elapse: Elapse
) -> None:
    async with opened(new_store) as store:
        job = await create(store, enqueue=True)
        await store.lease(limit=10, visibility=0.2)

    await elapse(0.3)
    async with opened(new_store) as store:
        assert [lease.job_id for lease in await store.lease(limit=10, visibility=30.0)] == [
            job.job_id
        ]


async def test_secrets_survive_reopening(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        key = await store.secret("callback-token")

    async with opened(new_store) as store:
        assert await store.secret("callback-token") == key
