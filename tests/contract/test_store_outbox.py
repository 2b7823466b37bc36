"""The outbox: lease with a visibility timeout, ack, retry later, and the lease rule (ack and
retry_later take effect only while their lease is current). Time passes by the test's clock
(`elapse`), and never between a lease and the calls a test makes on it unless the test says so."""

from __future__ import annotations

from dispatcher_gateway.core.ports import Store
from tests.support.builders import Elapse, ManualClock, create

SHORT = 0.2
"""A visibility or delay a test lets run out."""
PAST_SHORT = SHORT + 0.1
LONG = 30.0
"""A visibility or delay no test lets run out."""
SERVICE_VISIBILITY = 200.0
"""The service's outbox lease: a background upstream call may take 120 s."""


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


async def test_an_entry_whose_visibility_ran_out_is_handed_out_again_one_attempt_higher(
    store: Store, elapse: Elapse
) -> None:
    job = await create(store, enqueue=True)
    await store.lease(limit=10, visibility=SHORT)
    await elapse(PAST_SHORT)

    [again] = await store.lease(limit=10, visibility=LONG)

    assert (again.job_id, again.attempts) == (job.job_id, 1)


async def test_lease_hands_out_at_most_limit_oldest_first(store: Store) -> None:
    jobs = [await create(store, enqueue=True) for _ in range(5)]

    batches = [await store.lease(limit=2, visibility=LONG) for _ in range(4)]

    assert [[lease.job_id for lease in batch] for batch in batches] == [
        [jobs[0].job_id, jobs[1].job_id],
        [jobs[2].job_id, jobs[3].job_id],
        [jobs[4].job_id],
        [],
    ]


async def test_an_acked_entry_is_never_handed_out_again(store: Store, elapse: Elapse) -> None:
    await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=SHORT)

    await store.ack(lease)
    await elapse(PAST_SHORT)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_ack_leaves_the_other_entries(store: Store, elapse: Elapse) -> None:
    await create(store, enqueue=True)
    kept = await create(store, enqueue=True)
    [first, _] = await store.lease(limit=10, visibility=SHORT)

    await store.ack(first)
    await elapse(PAST_SHORT)

    assert [lease.job_id for lease in await store.lease(limit=10, visibility=LONG)] == [kept.job_id]


async def test_retry_later_hides_the_entry_for_the_delay(store: Store) -> None:
    await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)

    await store.retry_later(lease, LONG)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_retry_later_hands_the_entry_out_after_the_delay_one_attempt_higher(
    store: Store, elapse: Elapse
) -> None:
    job = await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)
    await store.retry_later(lease, SHORT)
    await elapse(PAST_SHORT)

    [second] = await store.lease(limit=10, visibility=LONG)
    await store.retry_later(second, 0.0)
    [third] = await store.lease(limit=10, visibility=LONG)

    assert (second.job_id, second.attempts) == (job.job_id, 1)
    assert (third.job_id, third.attempts) == (job.job_id, 2)


# The lease rule


async def test_an_ack_after_the_visibility_ran_out_does_nothing(
    store: Store, elapse: Elapse
) -> None:
    job = await create(store, enqueue=True)
    [late] = await store.lease(limit=10, visibility=SHORT)
    await elapse(PAST_SHORT)

    await store.ack(late)

    [again] = await store.lease(limit=10, visibility=LONG)
    assert (again.job_id, again.attempts) == (job.job_id, 1)


async def test_a_retry_later_after_the_visibility_ran_out_does_nothing(
    store: Store, elapse: Elapse
) -> None:
    job = await create(store, enqueue=True)
    [late] = await store.lease(limit=10, visibility=SHORT)
    await elapse(PAST_SHORT)

    await store.retry_later(late, LONG)

    [again] = await store.lease(limit=10, visibility=LONG)
    assert (again.job_id, again.attempts) == (job.job_id, 1)


async def test_a_stale_ack_does_not_undo_the_next_workers_lease(
    store: Store, elapse: Elapse
) -> None:
    job = await create(store, enqueue=True)
    [stale] = await store.lease(limit=10, visibility=SHORT)
    await elapse(PAST_SHORT)
    [current] = await store.lease(limit=10, visibility=LONG)

    await store.ack(stale)

    # The second worker still holds the entry: its retry puts it back.
    await store.retry_later(current, 0.0)
    [again] = await store.lease(limit=10, visibility=LONG)
    assert (again.job_id, again.attempts) == (job.job_id, 2)


async def test_a_stale_retry_later_does_not_undo_the_next_workers_lease(
    store: Store, elapse: Elapse
) -> None:
    await create(store, enqueue=True)
    [stale] = await store.lease(limit=10, visibility=SHORT)
    await elapse(PAST_SHORT)
    await store.lease(limit=10, visibility=LONG)

    await store.retry_later(stale, 0.0)

    # Still hidden by the second worker's lease.
    assert await store.lease(limit=10, visibility=LONG) == []


async def test_the_current_lease_acks_after_a_stale_ack(store: Store, elapse: Elapse) -> None:
    await create(store, enqueue=True)
    [stale] = await store.lease(limit=10, visibility=SHORT)
    await elapse(PAST_SHORT)
    [current] = await store.lease(limit=10, visibility=SHORT)
    await store.ack(stale)

    await store.ack(current)
    await elapse(PAST_SHORT)

    assert await store.lease(limit=10, visibility=LONG) == []


async def test_an_ack_after_retry_later_does_nothing(store: Store) -> None:
    job = await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)
    await store.retry_later(lease, 0.0)

    await store.ack(lease)

    [again] = await store.lease(limit=10, visibility=LONG)
    assert (again.job_id, again.attempts) == (job.job_id, 1)


async def test_a_second_retry_later_does_nothing(store: Store) -> None:
    job = await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=LONG)
    await store.retry_later(lease, 0.0)

    await store.retry_later(lease, LONG)

    [again] = await store.lease(limit=10, visibility=LONG)
    assert (again.job_id, again.attempts) == (job.job_id, 1)


async def test_a_long_lease_is_current_until_its_visibility_runs_out(
    store: Store, clock: ManualClock
) -> None:
    job = await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=SERVICE_VISIBILITY)
    clock.advance(SERVICE_VISIBILITY - 1.0)

    await store.retry_later(lease, 0.0)

    [again] = await store.lease(limit=10, visibility=SERVICE_VISIBILITY)
    assert (again.job_id, again.attempts) == (job.job_id, 1)
