"""SqliteStore: the `Store` contract on one SQLite file, its operations as SQL run by the
writer (engine.py)."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

from ...core.errors import NotFound, StoreUnavailable
from ...core.model import Job, JobEvent, Lease, Priority, QueueDepth
from ...core.ports import Apply, Clock
from ...core.query import JobQuery
from .. import codec
from ..codec import DEFAULT_DEDUPE_TTL, SECRET_BYTES
from . import ops, rows, schema
from .engine import Writer
from .queued import MAX_BATCH, Batch
from .tail import Feeds, Tail
from .wake import Neighbours
from .watched import WatchedEntries

# Pruning costs a scan of the old keys; doing it on every append would tax the hot path.
DEDUPE_PRUNE_INTERVAL: Final = 600.0
TURNS_SUFFIX: Final = "-writer.lock"
"""Beside the file (as SQLite's -wal and -shm): the lock its writers take turns on, when they
are a gateway's workers (engine.py's Writer)."""


class SqliteStore:
    """The `Store` contract on one SQLite file. See the package docstring for threading,
    durability and cursors."""

    def __init__(
        self,
        path: str | Path,
        *,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        synchronous: str = "FULL",
        clock: Clock = time.time,
        neighbours: Neighbours | None = None,
    ) -> None:
        """`clock` times the outbox (when entries are due, when leases run out) and the rate
        limit; the file keeps its readings, so it must be a wall clock like time.time.
        `neighbours`: the other processes writing to the file, woken after each commit of events
        (a gateway's workers)."""
        if synchronous.upper() not in schema.SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(schema.SYNCHRONOUS_MODES)}")
        self._path = Path(path)
        self._clock = clock
        self._dedupe_ttl = dedupe_ttl
        self._synchronous = synchronous.upper()
        self._prune_interval = min(DEDUPE_PRUNE_INTERVAL, dedupe_ttl)
        self._feeds = Feeds()
        self._neighbours = neighbours
        turns = None if neighbours is None else self._path.with_name(self._path.name + TURNS_SUFFIX)
        wal = self._path.with_name(self._path.name + "-wal")
        self._writer = Writer(str(self._path), self._connect, self._committed, turns=turns, wal=wal)
        self._last_prune = 0.0
        """Touched by the worker thread only."""
        self._entries = WatchedEntries()
        """The entries of create_job_taking_slot (watched.py)."""

    @property
    def path(self) -> Path:
        return self._path

    # Lifecycle

    async def open(self) -> None:
        await self._writer.start()
        if self._neighbours is not None:
            try:
                self._neighbours.listen(self._feeds.deliver)
            except OSError as exc:
                await self._writer.stop()
                raise StoreUnavailable(f"store {self._path}: {exc}") from exc

    async def close(self) -> None:
        """Finish what is queued, then close the file. Closing a closed store does nothing."""
        if self._neighbours is not None:
            self._neighbours.close()
        await self._writer.stop()

    def _committed(self, notes: list[JobEvent | ops.Watched]) -> None:
        """In the worker thread, after a commit that appended events or watched entries."""
        events = self._entries.committed(notes)
        if events:
            self._feeds.publish(events, self._writer.post)
            if self._neighbours is not None:
                self._neighbours.notify(events)

    async def check(self) -> None:
        if not self._writer.running:
            raise StoreUnavailable(f"store {self._path} is not open")
        await self._writer.run(lambda conn: conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall())

    async def secret(self, name: str) -> bytes:
        def get(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, key) VALUES (?, ?)",
                (name, secrets.token_bytes(SECRET_BYTES)),
            )
            row = conn.execute("SELECT key FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row["key"])

        return await self._writer.run(get, write=True)

    # Jobs

    async def create_job(
        self, job: Job, first_event: JobEvent, *, enqueue: bool
    ) -> tuple[Job, bool]:
        batch = None
        if not job.idempotency_key:
            batch = Batch(self._create_all, ops.NewJob(job, first_event, enqueue))
        return await self._writer.run(
            lambda conn: self._create(conn, job, first_event, enqueue), write=True, batch=batch
        )

    async def create_job_taking_slot(
        self, job: Job, first_event: JobEvent, *, limit: int, window: float
    ) -> tuple[Job, bool, float]:
        """One operation of the writer (one commit, one flush), where create_job and
        acquire_rate at once would be two answered by the same commit: one answer to wait for.

        The job is a sync call's, which the call itself ends: its outbox entry is watched, and
        dropped by the next lease once the job has ended (`_committed`), which spares the outbox
        a read and an ack for every sync call (it would only find the job ended). Not by the
        write that ends the job: that one is flushed, and a sync call waits for it."""
        _check_limit(limit)
        batch = None
        if not job.idempotency_key:
            item = (ops.NewJob(job, first_event, True, watched=True), limit, window)
            batch = Batch(self._create_all_taking_slots, item)

        def create(conn: sqlite3.Connection) -> tuple[Job, bool, float]:
            stored, created = self._create(conn, job, first_event, True, watched=True)
            return stored, created, ops.take_rate(conn, self._clock(), limit, window)

        return await self._writer.run(create, write=True, batch=batch)

    async def create_jobs(
        self, new: Sequence[tuple[Job, JobEvent]], *, enqueue: bool
    ) -> list[tuple[Job, bool]]:
        """One operation of the writer: one transaction, one commit for all of them. Runs of
        jobs without an idempotency key are written as the writer's group commits write them
        (`_create_all`: a few multi-row statements for the run)."""

        def create(conn: sqlite3.Connection) -> list[tuple[Job, bool]]:
            done: list[tuple[Job, bool]] = []
            run: list[ops.NewJob] = []
            for job, first in new:
                if not job.idempotency_key:
                    run.append(ops.NewJob(job, first, enqueue))
                    if len(run) < MAX_BATCH:
                        continue
                if run:
                    done.extend(self._create_all(conn, run))
                    run = []
                if job.idempotency_key:
                    done.append(self._create(conn, job, first, enqueue))
            if run:
                done.extend(self._create_all(conn, run))
            return done

        return await self._writer.run(create, write=True)

    async def get_job(self, job_id: str) -> Job | None:
        return await self._writer.run(lambda conn: ops.job_by_id(conn, job_id))

    async def job_by_key(self, client: str, idempotency_key: str) -> Job | None:
        return await self._writer.run(lambda conn: ops.job_by_key(conn, client, idempotency_key))

    async def list_jobs(
        self, client: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        start = codec.page_start(limit, page_token)

        def page(conn: sqlite3.Connection) -> list[Job]:
            if start is None:
                found = conn.execute(
                    f"{rows.SELECT_JOBS} WHERE client = ?"
                    " ORDER BY created_at DESC, job_id DESC LIMIT ?",
                    (client, limit + 1),
                ).fetchall()
            else:
                created_at, job_id = start
                found = conn.execute(
                    f"{rows.SELECT_JOBS} WHERE client = ?"
                    " AND (created_at < ? OR (created_at = ? AND job_id < ?))"
                    " ORDER BY created_at DESC, job_id DESC LIMIT ?",
                    (client, created_at, created_at, job_id, limit + 1),
                ).fetchall()
            return [rows.job_from_row(row) for row in found]

        return codec.page_of(await self._writer.run(page), limit)

    async def find_jobs(
        self, query: JobQuery, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        start = codec.page_start(limit, page_token)
        where, params = ops.find_where(query, start)

        def page(conn: sqlite3.Connection) -> list[Job]:
            # Only _where's placeholders are spliced in, never a value.
            sql = f"{rows.SELECT_JOBS} WHERE {where} ORDER BY created_at DESC, job_id DESC LIMIT ?"
            found = conn.execute(sql, (*params, limit + 1)).fetchall()
            return [rows.job_from_row(row) for row in found]

        return codec.page_of(await self._writer.run(page), limit)

    async def begin_submission(self, job_id: str) -> Job:
        """See `Store.begin_submission`: the job read and marked in one of the writer's
        transactions, which appends (a cancel among them) are serialized with."""
        now = time.time()

        def begin(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"{rows.SELECT_JOBS} WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} not found")
            job = rows.job_from_row(row)
            if job.submit_begun_at or job.state.terminal:
                return job
            conn.execute("UPDATE jobs SET submit_begun_at = ? WHERE job_id = ?", (now, job_id))
            return job.replace(submit_begun_at=now)

        return await self._writer.run(begin, write=True)

    # Outbox

    async def lease(
        self, *, limit: int, visibility: float, client: str | None = None
    ) -> list[Lease]:
        take = ops.lease(self._clock, limit=limit, visibility=visibility, client=client)

        def lease(conn: sqlite3.Connection) -> list[Lease]:
            self._entries.drop_ended(conn)
            return take(conn)

        return await self._writer.run(lease, write=True)

    async def outbox_depths(self) -> dict[str, dict[Priority, QueueDepth]]:
        return await self._writer.run(lambda conn: ops.outbox_depths(conn, self._clock()))

    # The end of a lease is not flushed to disk on its own (engine.py: not durable): lost in a
    # crash of the machine, the entry is handed out again, and the worker finds it done or due.

    async def ack(self, lease: Lease) -> None:
        await self._writer.run(ops.ack(lease, self._clock), write=True, durable=False)

    async def retry_later(self, lease: Lease, delay: float) -> None:
        retry = ops.retry_later(lease, delay, self._clock)
        await self._writer.run(retry, write=True, durable=False)

    # Events

    async def append_event(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        """See `Store.append_event`. An empty `dedupe_key` is no key, like None: an event is
        never dropped for lack of an id."""
        recorded = await self.append_events([(event, dedupe_key)], apply=apply)
        return recorded[0]

    async def append_events(
        self, events: Sequence[tuple[JobEvent, str | None]], *, apply: Apply
    ) -> list[JobEvent | None]:
        """One operation of the writer: one answer to wait for. See `append_event`."""
        appends = [ops.Append(event, key, apply) for event, key in events]
        return await self._writer.run(
            lambda conn: self._append_all(conn, appends),
            write=True,
            batch=Batch(self._append_lists, appends),
        )

    async def read_events(
        self, *, client: str, after: str = "", job_id: str = "", limit: int = 1000
    ) -> list[JobEvent]:
        seq = codec.parse_cursor(after)

        def read(conn: sqlite3.Connection) -> list[JobEvent]:
            if job_id:
                found = conn.execute(
                    "SELECT * FROM events WHERE job_id = ? AND client = ? AND seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (job_id, client, seq, limit),
                ).fetchall()
            else:
                found = conn.execute(
                    "SELECT * FROM events WHERE client = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (client, seq, limit),
                ).fetchall()
            return [rows.event_from_row(row) for row in found]

        return await self._writer.run(read)

    def tail(self, *, after: str) -> AsyncIterator[JobEvent]:
        return Tail(self._feeds, lambda: self.events_after, codec.parse_cursor(after))

    async def last_cursor(self) -> str:
        def last(conn: sqlite3.Connection) -> str:
            seq = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            return "" if seq is None else str(seq)

        return await self._writer.run(last)

    async def cursor_before(self, when: float) -> str:
        def find(conn: sqlite3.Connection) -> str:
            # events_by_record_time: the events recorded since then, not the whole log.
            first = conn.execute(
                "SELECT min(seq) FROM events WHERE record_time >= ?", (when,)
            ).fetchone()[0]
            if first is None:
                first = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
                return "" if first is None else str(first)
            return str(first - 1) if first > 1 else ""

        return await self._writer.run(find)

    async def events_after(self, seq: int, limit: int) -> list[JobEvent]:
        """Every client's events after `seq` (what a tail catches up with)."""

        def read(conn: sqlite3.Connection) -> list[JobEvent]:
            found = conn.execute(
                "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            return [rows.event_from_row(row) for row in found]

        return await self._writer.run(read)

    # Rate limit

    async def acquire_rate(self, *, limit: int, window: float) -> float:
        _check_limit(limit)
        return await self._writer.run(
            lambda conn: ops.take_rate(conn, self._clock(), limit, window), write=True
        )

    # In the worker thread

    def _connect(self) -> sqlite3.Connection:
        # Read at each open from the package, where it is public (a test shortens it there).
        from . import BUSY_TIMEOUT_MS

        conn = schema.connect(
            self._path, synchronous=self._synchronous, busy_timeout_ms=BUSY_TIMEOUT_MS
        )
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._maybe_prune_dedupe(conn, time.time())
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _create(
        self,
        conn: sqlite3.Connection,
        job: Job,
        first_event: JobEvent,
        enqueue: bool,
        *,
        watched: bool = False,
    ) -> tuple[Job, bool]:
        """create_job's operation, for one job."""
        if job.idempotency_key:
            existing = ops.find_job(conn, job)
            if existing is not None:
                return existing, False
        now = time.time()
        try:
            conn.execute(rows.INSERT_JOB, rows.job_params(job))
        except sqlite3.IntegrityError:
            # A job with this id: a retry of a create that did commit.
            existing = ops.find_job(conn, job)
            if existing is None:
                raise
            return existing, False
        self._insert_events(conn, [first_event], now)
        if enqueue:
            self._enqueue(conn, [job], watched=[job] if watched else [])
        return job, True

    def _create_all(
        self, conn: sqlite3.Connection, new: list[ops.NewJob]
    ) -> list[tuple[Job, bool]]:
        """Creates without idempotency keys, three statements for all: what `create_job`'s
        operation does for one. A job id already there raises IntegrityError (the group is then
        applied op by op, where that create finds the job)."""
        now = time.time()
        jobs = [rows.job_params(n.job) for n in new]
        conn.execute(
            rows.insert_many("jobs", rows.JOB_COLUMNS, len(new)),
            [p[c] for p in jobs for c in rows.JOB_COLUMNS],
        )
        self._insert_events(conn, [n.first_event for n in new], now)
        queued = [n for n in new if n.enqueue]
        self._enqueue(conn, [n.job for n in queued], [n.job for n in queued if n.watched])
        return [(n.job, True) for n in new]

    def _enqueue(self, conn: sqlite3.Connection, jobs: list[Job], watched: list[Job]) -> None:
        """Outbox entries for `jobs`, due now; those of `watched` (some of them) are noted, to be
        dropped once their job ends."""
        ids = ops.add_to_outbox(conn, jobs, self._clock())
        if watched:
            entry_of = {job.job_id: entry_id for job, entry_id in zip(jobs, ids, strict=True)}
            self._writer.note([ops.Watched(job.job_id, entry_of[job.job_id]) for job in watched])

    def _create_all_taking_slots(
        self, conn: sqlite3.Connection, items: list[tuple[ops.NewJob, int, float]]
    ) -> list[tuple[Job, bool, float]]:
        """create_job_taking_slot's operations, the creates as `_create_all` writes them."""
        made = self._create_all(conn, [new for new, _, _ in items])
        return [
            (job, created, ops.take_rate(conn, self._clock(), limit, window))
            for (job, created), (_, limit, window) in zip(made, items, strict=True)
        ]

    def _append_lists(
        self, conn: sqlite3.Connection, lists: list[list[ops.Append]]
    ) -> list[list[JobEvent | None]]:
        """append_events' operations, all their appends as `_append_all` writes them."""
        recorded = iter(self._append_all(conn, [a for appends in lists for a in appends]))
        return [[next(recorded) for _ in appends] for appends in lists]

    def _append_all(
        self, conn: sqlite3.Connection, appends: list[ops.Append]
    ) -> list[JobEvent | None]:
        """Appends, in order, in a few statements for all (one or many). A job that is not there
        raises NotFound (in a group, the group is then applied op by op)."""
        now = time.time()
        self._maybe_prune_dedupe(conn, now)
        keys = [a.dedupe_key for a in appends if a.dedupe_key]
        seen: set[str] = set()
        if keys:
            known = f"SELECT dedupe_key FROM dedupe WHERE dedupe_key IN ({rows.marks(len(keys))})"  # noqa: S608
            seen = {row[0] for row in conn.execute(known, keys)}
        fresh: list[str] = []
        wanted: list[ops.Append | None] = []
        for append in appends:
            key = append.dedupe_key
            if key and key in seen:
                wanted.append(None)  # a duplicate: nothing written
                continue
            if key:
                seen.add(key)
                fresh.append(key)
            wanted.append(append)
        ids = list({w.event.job_id: None for w in wanted if w is not None})
        jobs: dict[str, Job] = {}
        if ids:
            select = f"{rows.SELECT_JOBS_STATE} WHERE job_id IN ({rows.marks(len(ids))})"
            jobs = {row["job_id"]: rows.job_from_row(row) for row in conn.execute(select, ids)}
        recorded: list[JobEvent | None] = []
        for w in wanted:
            if w is None:
                recorded.append(None)
                continue
            job = jobs.get(w.event.job_id)
            if job is None:
                raise NotFound(f"job {w.event.job_id} not found")
            # Events of one job in one group are folded one after the other.
            jobs[w.event.job_id], event = w.apply(job, w.event.replace(record_time=now))
            recorded.append(event)
        if fresh:
            conn.execute(
                rows.insert_many("dedupe", ["dedupe_key", "seen_at"], len(fresh)),
                [v for key in fresh for v in (key, now)],
            )
        written = iter(self._insert_events(conn, [e for e in recorded if e is not None], now))
        if ids:
            conn.execute(
                rows.update_jobs(len(ids)),
                [value for i in ids for value in rows.job_state_values(jobs[i])],
            )
        return [None if e is None else next(written) for e in recorded]

    def _insert_events(
        self, conn: sqlite3.Connection, events: list[JobEvent], now: float
    ) -> list[JobEvent]:
        """ops.insert_events, the events noted for the tails."""
        recorded = ops.insert_events(conn, events, now)
        self._writer.note(recorded)
        return recorded

    def _maybe_prune_dedupe(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_prune < self._prune_interval:
            return
        self._last_prune = now
        conn.execute("DELETE FROM dedupe WHERE seen_at < ?", (now - self._dedupe_ttl,))


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError("limit must be at least 1")
