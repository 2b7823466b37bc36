"""What only the SQLite backend's tails do: feed on this process's commits, poll the file for
another connection's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dispatcher_gateway.core.model import JobEvent
from dispatcher_gateway.store import SqliteStore
from dispatcher_gateway.store.sqlite import tail as sqlite_tail
from dispatcher_gateway.store.sqlite import wake as sqlite_wake
from tests.support.builders import (
    append,
    create,
    event_for,
    new_job,
    opened,
    tailing,
    take,
)
from tests.support.sqlite_workers import worker_stores


async def test_a_tail_sees_events_another_connection_wrote(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    async with opened(lambda: SqliteStore(path)) as reader:
        start = await reader.last_cursor()
        async with opened(lambda: SqliteStore(path)) as writer, tailing(reader, start) as tail:
            following = asyncio.create_task(take(tail, 1))
            await asyncio.sleep(0.05)
            job = await create(writer)

            [event] = await following

    assert event.job_id == job.job_id


async def test_a_tail_gets_this_process_commits_without_reading_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No poll of the file while the test runs: what reaches the tail after its first read came
    # by its feed, however slow the machine.
    monkeypatch.setattr(sqlite_tail, "TAIL_POLL_INTERVAL", 3600.0)
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        job = await create(store)
        start = await store.last_cursor()
        reads: list[int] = []
        first_read = asyncio.Event()
        read_file = store.events_after

        async def counted(seq: int, limit: int) -> list[JobEvent]:
            events = await read_file(seq, limit)
            reads.append(seq)
            first_read.set()
            return events

        monkeypatch.setattr(store, "events_after", counted)
        async with tailing(store, start) as tail:
            following = asyncio.create_task(take(tail, 3))
            await first_read.wait()  # found nothing after `start`: the tail waits on its feed
            appended = [await append(store, job) for _ in range(3)]

            assert await following == appended
    assert reads == [int(start)]


async def test_a_tail_interleaves_this_process_commits_and_another_connections_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    async with (
        opened(lambda: SqliteStore(path)) as store,
        opened(lambda: SqliteStore(path)) as other,
    ):
        job = await create(store)
        async with tailing(store, await store.last_cursor()) as tail:
            following = asyncio.create_task(take(tail, 5))
            await asyncio.sleep(0.05)
            appended = []
            for writer in (store, other, other, store, store):
                appended.append(await append(writer, job))

            got = await following

    assert [e.cursor for e in got] == [e.cursor for e in appended]
    assert [int(e.cursor) for e in got] == sorted(int(e.cursor) for e in got)


# The events in the datagram, or (too large for one) a datagram that says "read the file".
@pytest.mark.parametrize("max_datagram", [sqlite_wake.MAX_DATAGRAM, 0])
async def test_a_tail_has_a_neighbours_commit_at_once_not_at_its_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_datagram: int
) -> None:
    # No poll while the test runs: another worker's events reach this tail by its datagrams.
    monkeypatch.setattr(sqlite_tail, "TAIL_POLL_INTERVAL", 3600.0)
    monkeypatch.setattr(sqlite_wake, "MAX_DATAGRAM", max_datagram)
    reader, writer = worker_stores(tmp_path / "gateway.db", time.time)
    async with opened(lambda: reader), opened(lambda: writer):
        job = await create(writer)
        async with tailing(reader, await reader.last_cursor()) as tail:
            following = asyncio.create_task(take(tail, 4))
            await asyncio.sleep(0.05)
            appended = [await append(writer, job) for _ in range(2)]
            appended += [await append(reader, job), await append(writer, job)]

            assert await following == appended


async def test_a_neighbour_away_costs_its_writer_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker 1 of 3 never started (or is restarting): worker 0's commits go on, and worker 2 is
    # still woken (not polled).
    monkeypatch.setattr(sqlite_tail, "TAIL_POLL_INTERVAL", 3600.0)
    first, _, third = worker_stores(tmp_path / "gateway.db", time.time, count=3)
    async with opened(lambda: first), opened(lambda: third):
        job = await create(first)
        async with tailing(third, await third.last_cursor()) as tail:
            following = asyncio.create_task(take(tail, 1))
            await asyncio.sleep(0.05)
            event = await append(first, job)

            assert await following == [event]


_EVENT = event_for(new_job())


def _event(seq: int) -> JobEvent:
    return _EVENT.replace(cursor=str(seq))


async def _tail_reading(
    feeds: sqlite_tail.Feeds, file: list[JobEvent], reads: list[int]
) -> sqlite_tail.Tail:
    async def read_after(seq: int, limit: int) -> list[JobEvent]:
        reads.append(seq)
        return [e for e in file if int(e.cursor) > seq][:limit]

    return sqlite_tail.Tail(feeds, lambda: read_after, 0)


async def test_a_tail_handed_a_later_commit_first_waits_for_the_earlier_one_not_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Workers hand their commits over after their own flush: another's earlier commit may come
    # a little after this one's.
    monkeypatch.setattr(sqlite_tail, "TAIL_POLL_INTERVAL", 3600.0)
    feeds = sqlite_tail.Feeds()
    reads: list[int] = []
    tail = await _tail_reading(feeds, [], reads)
    following = asyncio.create_task(take(tail, 3))
    await asyncio.sleep(0.01)
    feeds.publish([_event(2)])
    await asyncio.sleep(0.01)
    feeds.deliver([_event(1)])
    feeds.publish([_event(3)])

    assert [e.cursor for e in await following] == ["1", "2", "3"]
    assert reads == [0]


async def test_a_gap_not_filled_in_time_is_read_from_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_tail, "TAIL_POLL_INTERVAL", 3600.0)
    feeds = sqlite_tail.Feeds()
    reads: list[int] = []
    file: list[JobEvent] = []
    tail = await _tail_reading(feeds, file, reads)
    following = asyncio.create_task(take(tail, 2))
    await asyncio.sleep(0.01)
    file += [_event(1), _event(2)]
    feeds.publish([_event(2)])  # 1 never handed over (a datagram lost)

    assert [e.cursor for e in await following] == ["1", "2"]
    assert reads == [0, 0]
