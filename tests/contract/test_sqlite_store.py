"""What only the SQLite backend promises: the file, its failures, its durability."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import InvalidArgument, NotFound, StoreUnavailable
from dispatcher_gateway.core.model import JobEvent, JobState
from dispatcher_gateway.store import SqliteStore

from .builders import (
    CLIENT,
    WAIT,
    append,
    create,
    event_for,
    new_job,
    opened,
    queued_event,
    tailing,
    take,
)

# Writes a job and an event, says so once both calls returned, then waits to be killed.
WRITER = """
import asyncio, sys
from dispatcher_gateway.core import states
from dispatcher_gateway.store import SqliteStore
from tests.contract.builders import append, create

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
    async with opened(lambda: SqliteStore(tmp_path / "gateway.db")) as store:
        job = await create(store)
        async with tailing(store, await store.last_cursor()) as tail:
            following = asyncio.create_task(take(tail, 3))
            await asyncio.sleep(0.05)  # the tail's first read of the file is done
            reads: list[int] = []
            read_file = store._events_after

            async def counted(seq: int, limit: int) -> list[JobEvent]:
                reads.append(seq)
                return await read_file(seq, limit)

            monkeypatch.setattr(store, "_events_after", counted)
            appended = [await append(store, job) for _ in range(3)]

            assert await following == appended
    assert reads == []


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
