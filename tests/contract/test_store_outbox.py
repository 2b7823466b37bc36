"""The outbox: lease with a visibility timeout, ack, retry later."""

from __future__ import annotations

import asyncio

from dispatcher_gateway.store import Store

from .builders import create

SHORT = 0.2
"""A visibility or delay short enough to wait out in a test."""
PAST_SHORT = SHORT + 0.1
LONG = 30.0
"""A visibility no test waits out."""


async def test_an_enqueued_job_is_leased_with_no_attempts(store: Store) -> None:
    job = await create(store, enqueue=True)

    [lease] = await store.lease(limit=10, visibility=LONG)

    assert (lease.job_id, lease.attempts) == (job.job_id, 0)


async def test_a_job_created_without_enqueue_is_not_on_the_outbox(store: Store) -> None:
    await create(store, enqueue=False)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_a_leased_entry_is_hidden_from_other_workers(store: Store) -> None:
    await create(store, enqueue=True)
    await store.lease(limit=10, visibility=LONG)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_an_entry_whose_visibility_ran_out_is_handed_out_again(store: Store) -> None:
    job = await create(store, enqueue=True)
    await store.lease(limit=10, visibility=SHORT)
    await asyncio.sleep(PAST_SHORT)

    again = await store.lease(limit=10, visibility=LONG)

    assert [lease.job_id for lease in again] == [job.job_id]


async def test_lease_hands_out_at_most_limit_oldest_first(store: Store) -> None:
    jobs = [await create(store, enqueue=True) for _ in range(5)]

    batches = [await store.lease(limit=2, visibility=LONG) for _ in range(4)]

    assert [[lease.job_id for lease in batch] for batch in batches] == [
        [jobs[0].job_id, jobs[1].job_id],
        [jobs[2].job_id, jobs[3].job_id],
        [jobs[4].job_id],
        [],
    ]


async def test_an_acked_entry_is_never_handed_out_again(store: Store) -> None:
    await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=SHORT)

    await store.ack(lease)
    await asyncio.sleep(PAST_SHORT)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_ack_leaves_the_other_entries(store: Store) -> None:
    await create(store, enqueue=True)
    kept = await create(store, enqueue=True)
    [first, _] = await store.lease(limit=10, visibility=SHORT)

    await store.ack(first)
    await asyncio.sleep(PAST_SHORT)

    assert [lease.job_id for lease in await store.lease(limit=10, visibility=LONG)] == [kept.job_id]


async def test_retry_later_hides_the_entry_for_the_delay(store: Store) -> None:
    await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)

    await store.retry_later(lease, SHORT)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_retry_later_hands_the_entry_out_after_the_delay_one_attempt_higher(
    store: Store,
) -> None:
    job = await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)
    await store.retry_later(lease, SHORT)
    await asyncio.sleep(PAST_SHORT)

    [second] = await store.lease(limit=10, visibility=LONG)
    await store.retry_later(second, 0.0)
    [third] = await store.lease(limit=10, visibility=LONG)

    assert (second.job_id, second.attempts) == (job.job_id, 1)
    assert (third.job_id, third.attempts) == (job.job_id, 2)


async def test_a_stale_ack_does_not_undo_the_next_workers_lease(store: Store) -> None:
    job = await create(store, enqueue=True)
    [stale] = await store.lease(limit=10, visibility=SHORT)
    await asyncio.sleep(PAST_SHORT)
    [current] = await store.lease(limit=10, visibility=SHORT)

    await store.ack(stale)

    # Still leased to the second worker: hidden now, and back once its visibility runs out.
    assert await store.lease(limit=10, visibility=LONG) == []
    await asyncio.sleep(PAST_SHORT)
    assert [lease.job_id for lease in await store.lease(limit=10, visibility=LONG)] == [job.job_id]
    assert current.job_id == job.job_id


async def test_the_current_lease_acks_after_a_stale_ack(store: Store) -> None:
    await create(store, enqueue=True)
    [stale] = await store.lease(limit=10, visibility=SHORT)
    await asyncio.sleep(PAST_SHORT)
    [current] = await store.lease(limit=10, visibility=SHORT)
    await store.ack(stale)

    await store.ack(current)
    await asyncio.sleep(PAST_SHORT)

    assert await store.lease(limit=10, visibility=LONG) == []
