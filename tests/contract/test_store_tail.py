"""tail(): every event after a cursor, replayed from the log and then followed live."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core.model import JobEvent
from dispatcher_gateway.core.ports import Store
from tests.support.builders import CLIENT, OTHER_CLIENT, append, create, eventually, tailing, take


async def test_tail_replays_the_log_then_follows_live(store: Store) -> None:
    job = await create(store)
    old = [await append(store, job) for _ in range(2)]

    async with tailing(store, "") as tail:
        replayed = await take(tail, 3)
        live = asyncio.create_task(take(tail, 2))
        await asyncio.sleep(0.05)
        new = [await append(store, job) for _ in range(2)]

        assert [e.cursor for e in replayed[1:]] == [e.cursor for e in old]
        assert await live == new


async def test_tail_starts_after_the_given_cursor(store: Store) -> None:
    job = await create(store)
    seen = await append(store, job)
    unseen = await append(store, job)

    async with tailing(store, seen.cursor) as tail:
        assert await take(tail, 1) == [unseen]


async def test_tail_carries_every_clients_events(store: Store) -> None:
    start = await store.last_cursor()
    mine = await create(store, CLIENT)
    theirs = await create(store, OTHER_CLIENT)

    async with tailing(store, start) as tail:
        events = await take(tail, 2)

    assert [(e.client, e.job_id) for e in events] == [
        (CLIENT, mine.job_id),
        (OTHER_CLIENT, theirs.job_id),
    ]


async def test_two_tails_each_get_every_live_event(store: Store) -> None:
    job = await create(store)
    start = await store.last_cursor()

    async with tailing(store, start) as one, tailing(store, start) as two:
        first = asyncio.create_task(take(one, 3))
        second = asyncio.create_task(take(two, 3))
        await asyncio.sleep(0.05)
        appended = [await append(store, job) for _ in range(3)]

        assert await first == appended
        assert await second == appended


async def test_tail_delivers_concurrent_appends_in_cursor_order(store: Store) -> None:
    jobs = [await create(store) for _ in range(4)]
    start = await store.last_cursor()

    async with tailing(store, start) as tail:
        reader = asyncio.create_task(take(tail, 40))
        await asyncio.gather(*(append(store, jobs[i % 4]) for i in range(40)))
        events = await reader

    cursors = [int(e.cursor) for e in events]
    assert cursors == sorted(set(cursors))


async def test_cancelling_a_tail_leaves_nothing_behind(store: Store) -> None:
    job = await create(store)
    start = await store.last_cursor()
    before = asyncio.all_tasks()
    waiting = asyncio.Event()

    async def follow() -> JobEvent:
        async with tailing(store, start) as tail:
            waiting.set()
            return await anext(tail)

    follower = asyncio.create_task(follow())
    await waiting.wait()
    await asyncio.sleep(0.05)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower

    await eventually(lambda: asyncio.all_tasks() <= before)
    appended = await append(store, job)
    async with tailing(store, start) as tail:
        assert await take(tail, 1) == [appended]
