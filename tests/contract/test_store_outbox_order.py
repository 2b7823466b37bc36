"""The outbox's order for the fair share (core/fairshare.py): one client's entries by priority,
then oldest first; lease(client=...) hands out that client's alone; outbox_depths counts the
entries by client and priority, never handed out (fresh) or handed out before (other)."""

from __future__ import annotations

from dispatcher_gateway.core.model import Priority, QueueDepth
from dispatcher_gateway.core.ports import Store
from tests.support.builders import Elapse, create

LONG = 30.0
SHORT = 0.2
PAST_SHORT = SHORT + 0.1


async def leased_ids(store: Store, client: str | None = None, limit: int = 100) -> list[str]:
    leases = await store.lease(limit=limit, visibility=LONG, client=client)
    return [lease.job_id for lease in leases]


async def test_a_clients_entries_come_high_first_then_normal_then_low_each_oldest_first(
    store: Store,
) -> None:
    low = await create(store, "a", enqueue=True, priority=Priority.LOW)
    normal1 = await create(store, "a", enqueue=True)
    high1 = await create(store, "a", enqueue=True, priority=Priority.HIGH)
    normal2 = await create(store, "a", enqueue=True)
    high2 = await create(store, "a", enqueue=True, priority=Priority.HIGH)

    assert await leased_ids(store, "a") == [
        high1.job_id,
        high2.job_id,
        normal1.job_id,
        normal2.job_id,
        low.job_id,
    ]


async def test_lease_for_a_client_hands_out_its_entries_alone(store: Store) -> None:
    a1 = await create(store, "a", enqueue=True)
    b1 = await create(store, "b", enqueue=True)
    a2 = await create(store, "a", enqueue=True)

    assert await leased_ids(store, "b") == [b1.job_id]
    assert await leased_ids(store, "a", limit=1) == [a1.job_id]
    assert await leased_ids(store, "a") == [a2.job_id]
    assert await leased_ids(store, "c") == []


async def test_a_high_priority_entry_overtakes_a_backlog_in_batches(store: Store) -> None:
    backlog = [await create(store, "a", enqueue=True) for _ in range(5)]
    first = await leased_ids(store, "a", limit=2)
    urgent = await create(store, "a", enqueue=True, priority=Priority.HIGH)

    assert first == [j.job_id for j in backlog[:2]]
    assert await leased_ids(store, "a", limit=2) == [urgent.job_id, backlog[2].job_id]


async def test_an_entry_retried_later_keeps_its_priority(store: Store, elapse: Elapse) -> None:
    high = await create(store, "a", enqueue=True, priority=Priority.HIGH)
    normal = await create(store, "a", enqueue=True)
    [lease] = await store.lease(limit=1, visibility=LONG, client="a")
    await store.retry_later(lease, SHORT)
    await elapse(PAST_SHORT)

    assert await leased_ids(store, "a") == [high.job_id, normal.job_id]


async def test_outbox_depths_count_fresh_and_handed_out_entries_by_client_and_priority(
    store: Store,
) -> None:
    for _ in range(3):
        await create(store, "a", enqueue=True)
    await create(store, "a", enqueue=True, priority=Priority.LOW)
    await create(store, "b", enqueue=True, priority=Priority.HIGH)
    await create(store, "b", enqueue=False)
    await store.lease(limit=2, visibility=LONG, client="a")

    assert await store.outbox_depths() == {
        "a": {Priority.NORMAL: QueueDepth(fresh=1, other=2), Priority.LOW: QueueDepth(fresh=1)},
        "b": {Priority.HIGH: QueueDepth(fresh=1)},
    }


async def test_an_acked_entry_leaves_the_depths(store: Store) -> None:
    await create(store, "a", enqueue=True)
    [lease] = await store.lease(limit=1, visibility=LONG, client="a")
    await store.ack(lease)

    assert await store.outbox_depths() == {}
