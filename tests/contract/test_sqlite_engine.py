"""The SQLite backend's writer: operations queued together are written together (group
commit, multi-row statements), and one failing does not undo the others."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import NotFound
from dispatcher_gateway.core.model import JobEvent, JobState
from dispatcher_gateway.store import SqliteStore
from dispatcher_gateway.store.sqlite.engine import Writer
from dispatcher_gateway.store.sqlite.queued import Batch
from tests.support.builders import (
    CLIENT,
    create,
    event_for,
    new_job,
    opened,
    queued_event,
    tailing,
    take,
)


async def test_creates_queued_together_are_written_together_each_with_its_own_cursor(
    tmp_path: Path,
) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        jobs = [new_job() for _ in range(40)]
        async with tailing(store, await store.last_cursor()) as tail:
            created = await asyncio.gather(
                *(
                    store.create_job(j, queued_event(j), enqueue=i % 2 == 0)
                    for i, j in enumerate(jobs)
                )
            )
            pushed = await take(tail, len(jobs))

        assert [c for _, c in created] == [True] * len(jobs)
        stored = await store.read_events(client=CLIENT)
        assert {e.job_id: e.cursor for e in stored} == {e.job_id: e.cursor for e in pushed}
        assert sorted(e.job_id for e in stored) == sorted(j.job_id for j in jobs)
        leases = await store.lease(limit=100, visibility=30)
        assert sorted(lease.job_id for lease in leases) == sorted(j.job_id for j in jobs[::2])


async def test_a_retried_create_in_a_batch_finds_its_job_and_the_others_are_created(
    tmp_path: Path,
) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        first = new_job()
        await store.create_job(first, queued_event(first), enqueue=True)
        others = [new_job() for _ in range(5)]
        outcomes = await asyncio.gather(
            *(store.create_job(j, queued_event(j), enqueue=True) for j in [*others, first])
        )

        assert [created for _, created in outcomes] == [True] * 5 + [False]
        assert outcomes[-1][0].job_id == first.job_id
        assert len(await store.read_events(client=CLIENT)) == 6
        assert len(await store.lease(limit=100, visibility=30)) == 6


async def test_appends_queued_together_fold_in_order_and_drop_duplicates(tmp_path: Path) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        one, two = await create(store), await create(store)
        calls = [
            (one, "letter_created", "a"),
            (two, "letter_created", "b"),
            (one, "letter_in_transit", "c"),
            (one, "letter_in_transit", "c"),  # the same webhook twice in one group
            (two, "letter_created", "b"),  # and again
            (one, states.COMPLETED, "d"),
            (two, "letter_delivered", None),
        ]
        recorded = await asyncio.gather(
            *(
                store.append_event(event_for(job, kind), dedupe_key=key, apply=states.apply_event)
                for job, kind, key in calls
            )
        )
        again = await store.append_event(
            event_for(one, states.COMPLETED), dedupe_key="d", apply=states.apply_event
        )

        assert [e is None for e in recorded] == [False, False, False, True, True, False, False]
        assert again is None
        written = [e for e in recorded if e is not None]
        assert [int(e.cursor) for e in written] == sorted(int(e.cursor) for e in written)
        stored_one, stored_two = await store.get_job(one.job_id), await store.get_job(two.job_id)
        assert stored_one is not None
        assert stored_two is not None
        assert (stored_one.state, stored_one.last_event) == (JobState.SUCCEEDED, states.COMPLETED)
        assert (stored_two.state, stored_two.last_event) == (JobState.SUCCEEDED, "letter_delivered")
        events = await store.read_events(client=CLIENT)
        assert [e.cursor for e in events][2:] == [e.cursor for e in written]
        assert [e.terminal for e in written] == [False, False, False, True, True]


async def test_an_append_to_a_missing_job_fails_alone_in_its_group(tmp_path: Path) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        job = await create(store)
        ghost = new_job()
        outcomes = await asyncio.gather(
            store.append_event(event_for(job), dedupe_key="x", apply=states.apply_event),
            store.append_event(event_for(ghost), dedupe_key="y", apply=states.apply_event),
            store.append_event(event_for(job), dedupe_key="z", apply=states.apply_event),
            return_exceptions=True,
        )

        assert isinstance(outcomes[1], NotFound)
        assert all(isinstance(o, JobEvent) for o in (outcomes[0], outcomes[2]))
        # The failed one's key was not burnt.
        await store.create_job(ghost, queued_event(ghost), enqueue=False)
        assert await store.append_event(event_for(ghost), dedupe_key="y", apply=states.apply_event)


T = TypeVar("T")


# The writer alone, on a table of its own: it knows no domain type.


async def _queued_together(writer: Writer, calls: list[Awaitable[T]]) -> list[T | BaseException]:
    """Runs `calls` as one group: the writer is held busy until all of them are queued."""
    busy, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait()

    held = asyncio.ensure_future(writer.run(hold))
    await asyncio.to_thread(busy.wait)
    tasks = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(0)  # each task runs up to its wait, its operation queued
    release.set()
    await held
    return await asyncio.gather(*tasks, return_exceptions=True)


def _connect(path: Path) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
        return conn

    return connect


async def test_the_writer_applies_operations_queued_together_in_one_call_per_kind(
    tmp_path: Path,
) -> None:
    calls: list[list[str]] = []
    committed: list[list[Any]] = []

    def insert_all(conn: sqlite3.Connection, keys: list[str]) -> list[str]:
        calls.append(keys)
        conn.executemany("INSERT INTO t (k) VALUES (?)", [(k,) for k in keys])
        writer.note(keys)
        return [k.upper() for k in keys]

    def insert(key: str) -> Callable[[sqlite3.Connection], str]:
        return lambda conn: insert_all(conn, [key])[0]

    writer = Writer("t.db", _connect(tmp_path / "t.db"), lambda notes: committed.append(notes))
    await writer.start()
    try:
        keys = [f"k{i}" for i in range(5)]
        values = await _queued_together(
            writer, [writer.run(insert(k), write=True, batch=Batch(insert_all, k)) for k in keys]
        )
        count = await writer.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone())
    finally:
        await writer.stop()

    assert values == ["K0", "K1", "K2", "K3", "K4"]
    assert calls == [keys]
    assert committed == [keys]
    assert count == (5,)


async def test_one_failing_write_does_not_undo_the_others_of_its_group(tmp_path: Path) -> None:
    committed: list[list[Any]] = []

    def insert(key: str) -> Callable[[sqlite3.Connection], str]:
        def run(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
            writer.note([key])
            return key

        return run

    writer = Writer("t.db", _connect(tmp_path / "t.db"), lambda notes: committed.append(notes))
    await writer.start()
    try:
        outcomes = await _queued_together(
            writer, [writer.run(insert(k), write=True) for k in ["a", "b", "a", "c"]]
        )
        stored = await writer.run(
            lambda conn: conn.execute("SELECT k FROM t ORDER BY k").fetchall()
        )
    finally:
        await writer.stop()

    assert outcomes[:2] == ["a", "b"]
    assert isinstance(outcomes[2], sqlite3.IntegrityError)
    assert outcomes[3] == "c"
    assert stored == [("a",), ("b",), ("c",)]
    assert committed == [["a", "b", "c"]]  # the undone write's note is dropped


async def test_a_group_of_writes_none_durable_commits_without_a_flush_of_its_own(
    tmp_path: Path,
) -> None:
    """synchronous as opened (FULL: 2) for a group with a durable write; NORMAL (1: no fsync in
    WAL mode) for a group of writes none of which is durable, and FULL again after it."""

    def level(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    writer = Writer("t.db", _connect(tmp_path / "t.db"), lambda notes: None)
    await writer.start()
    try:
        lazy_alone = await writer.run(level, write=True, durable=False)
        durable_after = await writer.run(level, write=True)
        mixed = await _queued_together(
            writer,
            [writer.run(level, write=True, durable=False), writer.run(level, write=True)],
        )
        lazy_again = await writer.run(level, write=True, durable=False)
        read = await writer.run(level)
    finally:
        await writer.stop()

    assert (lazy_alone, durable_after) == (1, 2)
    assert mixed == [2, 2]  # one durable write makes its group's commit flush
    assert (lazy_again, read) == (1, 1)  # a read commits nothing: left as the last write set it


async def test_writers_taking_turns_flush_the_wal_after_the_turn_before_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `turns` (a gateway's workers), a durable group's commit does not flush inside the
    turn (NORMAL); the writer flushes the WAL after it, before the group's answers and notes.
    Reads are answered after a flush too: they may see another worker's commit not flushed."""
    path = tmp_path / "t.db"
    wal = tmp_path / "t.db-wal"
    seen: list[tuple[str, Any]] = []
    flush = os.fdatasync

    def fdatasync(fd: int) -> None:
        seen.append(("flush", os.readlink(f"/proc/self/fd/{fd}")))
        flush(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)

    def connect() -> sqlite3.Connection:
        conn = _connect(path)()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def insert(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k) VALUES ('a')")
        writer.note(["a"])
        seen.append(("applied", None))
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])

    writer = Writer(
        "t.db",
        connect,
        lambda notes: seen.append(("noted", notes)),
        turns=tmp_path / "t.lock",
        wal=wal,
    )
    await writer.start()
    try:
        level = await writer.run(insert, write=True)
        seen.append(("answered", level))
        rows = await writer.run(count)
        seen.append(("answered", rows))
    finally:
        await writer.stop()

    # The answer and the notes both after the flush, in either order (threads of their own).
    assert seen[:2] == [("applied", None), ("flush", str(wal))]
    assert sorted(seen[2:4], key=str) == [("answered", 1), ("noted", ["a"])]  # 1: NORMAL
    assert seen[4:] == [("flush", str(wal)), ("answered", 1)]
