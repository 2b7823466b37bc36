"""What only the SQLite backend promises: the file, its failures, its durability."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import InvalidArgument, StoreUnavailable
from dispatcher_gateway.core.model import Job
from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.store import SqliteStore
from dispatcher_gateway.store.sqlite import schema
from tests.support.builders import (
    CLIENT,
    WAIT,
    ManualClock,
    append,
    create,
    event_for,
    new_job,
    opened,
    queued_event,
)

# Writes a job and an event, says so once both calls returned, then waits to be killed.
WRITER = """
import asyncio, sys
from dispatcher_gateway.core import states
from dispatcher_gateway.store import SqliteStore
from dispatcher_gateway.store.sqlite import schema
from tests.support.builders import append, create

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    await store.open()
    job = await create(store, key="order-1", enqueue=True)
    event = await append(store, job, states.COMPLETED, dedupe_key="wh-1")
    print(job.job_id, event.cursor, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_writes_that_returned_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert writer.stdout is not None
    async with asyncio.timeout(WAIT * 2):
        job_id, cursor = (await writer.stdout.readline()).decode().split()
    writer.send_signal(signal.SIGKILL)
    await writer.wait()

    async with opened(lambda: SqliteStore(path)) as store:
        job = await store.get_job(job_id)
        events = await store.read_events(client=CLIENT, job_id=job_id)
        leases = await store.lease(limit=10, visibility=30.0)

    assert job is not None
    assert job.state.terminal
    assert events[-1].cursor == cursor
    assert [lease.job_id for lease in leases] == [job_id]


async def test_open_creates_the_directory_and_a_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "gateway.db"

    async with opened(lambda: SqliteStore(path)):
        pass

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_connection_keeps_its_temporary_files_in_memory(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "gateway.db", synchronous="FULL", busy_timeout_ms=100)
    try:
        assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    finally:
        conn.close()


async def test_a_path_that_cannot_be_opened_is_unavailable_and_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "gateway.db"

    with pytest.raises(StoreUnavailable, match=re.escape(str(path))):
        await SqliteStore(path).open()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.write_bytes(b"certainly not SQLite " * 100)

    with pytest.raises(StoreUnavailable, match=re.escape(str(path))):
        await SqliteStore(path).open()


async def test_a_schema_newer_than_the_code_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")

    with pytest.raises(StoreUnavailable, match="schema version 999"):
        await SqliteStore(path).open()


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        pass

    with pytest.raises(StoreUnavailable):
        await store.get_job("job-1")


def test_an_unknown_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "gateway.db", synchronous="SOMETIMES; DROP TABLE jobs")


async def test_a_dedupe_key_is_forgotten_after_the_ttl(tmp_path: Path) -> None:
    ttl = 0.2
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db", dedupe_ttl=ttl)) as store:
        job = await create(store)
        await append(store, job, dedupe_key="wh-1")
        await asyncio.sleep(ttl + 0.1)

        again = await store.append_event(
            event_for(job), dedupe_key="wh-1", apply=states.apply_event
        )

    assert again is not None


async def test_an_empty_dedupe_key_dedupes_nothing(tmp_path: Path) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        job = await create(store)
        first = await store.append_event(event_for(job), dedupe_key="", apply=states.apply_event)
        second = await store.append_event(event_for(job), dedupe_key="", apply=states.apply_event)

    assert first is not None
    assert second is not None


async def test_a_malformed_cursor_is_an_invalid_argument(tmp_path: Path) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        with pytest.raises(InvalidArgument, match="cursor"):
            await store.read_events(client=CLIENT, after="12abc")


async def test_a_malformed_page_token_is_an_invalid_argument(tmp_path: Path) -> None:
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        with pytest.raises(InvalidArgument, match="page_token"):
            await store.list_jobs(CLIENT, limit=10, page_token="bm9wZQ==")


async def test_create_jobs_is_one_transaction_all_or_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        jobs = [new_job(key="k" if i == 5 else "") for i in range(10)]
        # One item that cannot be written (its body is not JSON) undoes the others.
        broken = jobs[7].replace(body={"x": object()})
        items = [(j, queued_event(j)) for j in [*jobs[:7], broken, *jobs[8:]]]
        with pytest.raises(TypeError):
            await store.create_jobs(items, enqueue=True)
        assert await store.read_events(client=CLIENT) == []
        assert await store.lease(limit=100, visibility=30.0) == []

        created = await store.create_jobs([(j, queued_event(j)) for j in jobs], enqueue=True)
        assert [c for _, c in created] == [True] * 10
    finally:
        await store.close()


# A sync call's entry, dropped by the next lease once its job has ended

VISIBILITY = 30.0


def outbox_jobs(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT job_id FROM outbox ORDER BY entry_id")]


async def create_taking_slot(store: Store, job: Job) -> None:
    _, created, _ = await store.create_job_taking_slot(
        job, queued_event(job), limit=100, window=VISIBILITY
    )
    assert created


async def test_the_entry_of_a_sync_call_that_ended_is_dropped_by_the_next_lease(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    async with opened(lambda: SqliteStore(path)) as store:
        ended, going_on = new_job(), new_job()
        await create_taking_slot(store, ended)
        await create_taking_slot(store, going_on)
        await append(store, ended, states.ATTEMPT)
        await append(store, ended, states.COMPLETED)
        await append(store, going_on, states.ATTEMPT)
        assert outbox_jobs(path) == [ended.job_id, going_on.job_id]

        leases = await store.lease(limit=10, visibility=VISIBILITY)

        assert [lease.job_id for lease in leases] == [going_on.job_id]
        assert outbox_jobs(path) == [going_on.job_id]


async def test_sync_entries_written_together_are_each_dropped_once_their_job_ended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    async with opened(lambda: SqliteStore(path)) as store:
        earlier = await create(store, enqueue=True)
        jobs = [new_job() for _ in range(4)]
        # One of them a retry of a create that did commit: the group is applied again op by op.
        await asyncio.gather(
            *(
                store.create_job_taking_slot(j, queued_event(j), limit=100, window=VISIBILITY)
                for j in [*jobs[:2], earlier, *jobs[2:]]
            )
        )
        for job in jobs[1:3]:
            await append(store, job, states.COMPLETED)
        await append(store, earlier, states.COMPLETED)

        await store.lease(limit=10, visibility=VISIBILITY)

        # Not the entry of create_job: the outbox drops it on finding its job ended.
        assert outbox_jobs(path) == [earlier.job_id, jobs[0].job_id, jobs[3].job_id]


async def test_the_rate_limit_admits_no_more_than_its_limit_when_the_clock_steps_back(
    tmp_path: Path,
) -> None:
    clock, path, limit, window = ManualClock(), tmp_path / "gateway.db", 3, 10.0
    async with opened(lambda: SqliteStore(path, clock=clock)) as store:
        # Back and forth, so that slots are taken out of the order of their times and deleted
        # out of the order they were taken in.
        for step in [0.0, -10.0, 0.1, 9.95, 0.0, 0.2, 0.0, -3.0, 0.0, 12.0, 0.0, 0.0, 0.0]:
            clock.advance(step)
            await store.acquire_rate(limit=limit, window=window)
            with contextlib.closing(sqlite3.connect(path)) as conn:
                [(taken,)] = conn.execute(
                    "SELECT count(*) FROM rate_log WHERE taken_at > ?", (clock() - window,)
                )
            assert taken <= limit
        clock.advance(window)
        waits = [await store.acquire_rate(limit=limit, window=window) for _ in range(limit + 1)]
        assert waits[:limit] == [0.0] * limit
        assert waits[limit] > 0.0
