"""What SqliteStore's operations carry to the writer, and the SQL lookups they share."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ...core.model import Job, JobEvent, Lease, Priority, QueueDepth
from ...core.ports import Apply
from ...core.query import JobQuery
from . import rows

LEASE_TOKEN_BYTES: Final = 16
DROP_BATCH: Final = 500
"""Entry ids deleted by one statement: within the 999 parameters of older SQLite builds."""
_PRIORITY_BY_RANK: Final = {p.rank: p for p in Priority}
"""The outbox keeps an entry's priority as its rank, the order it is handed out in."""


@dataclass(frozen=True, slots=True)
class LeaseHandle:
    """Names one lease of one outbox entry. The row holds the token and `leased_until` of its
    current lease, if any: an ack or retry_later changes the row only while both match (same
    token, not yet run out by the store's clock). The row's `attempts` counts its leases so far."""

    entry_id: int
    token: str


@dataclass(frozen=True, slots=True)
class NewJob:
    """A create with no idempotency key: those queued together are written by `_create_all`,
    one multi-row INSERT per table for all of them. `watched`: its outbox entry is to be
    dropped once the job ends (`Watched`)."""

    job: Job
    first_event: JobEvent
    enqueue: bool
    watched: bool = False


@dataclass(frozen=True, slots=True)
class Watched:
    """An outbox entry the store drops once its job has ended (a sync call's: the call ends the
    job, and the outbox would only find it ended), noted when its create is committed."""

    job_id: str
    entry_id: int


@dataclass(frozen=True, slots=True)
class Append:
    """An append: those queued together are written by `_append_all`."""

    event: JobEvent
    dedupe_key: str | None
    apply: Apply


def handle_of(lease: Lease) -> LeaseHandle:
    if not isinstance(lease.handle, LeaseHandle):
        raise TypeError("the lease was not handed out by a SqliteStore")
    return lease.handle


def ack(lease: Lease, clock: Callable[[], float]) -> Callable[[sqlite3.Connection], None]:
    """The write that ends the lease and drops its entry (Store.ack)."""
    handle = handle_of(lease)

    def end(conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM outbox WHERE entry_id = ? AND lease_token = ? AND leased_until > ?",
            (handle.entry_id, handle.token, clock()),
        )

    return end


def lease(
    clock: Callable[[], float], *, limit: int, visibility: float, client: str | None
) -> Callable[[sqlite3.Connection], list[Lease]]:
    """The write that leases up to `limit` due entries (of `client` only, when given: by
    outbox_by_client, the order they are handed out in) for `visibility` seconds (Store.lease)."""

    def take(conn: sqlite3.Connection) -> list[Lease]:
        now = clock()
        mine, params = ("client = ? AND ", (client,)) if client is not None else ("", ())
        due = conn.execute(
            f"SELECT entry_id, job_id, attempts FROM outbox WHERE {mine}due_at <= ?"  # noqa: S608
            " AND leased_until <= ? ORDER BY priority, due_at, entry_id LIMIT ?",
            (*params, now, now, limit),
        ).fetchall()
        leases = []
        for row in due:
            handle = LeaseHandle(row["entry_id"], secrets.token_hex(LEASE_TOKEN_BYTES))
            conn.execute(
                "UPDATE outbox SET leased_until = ?, lease_token = ?, attempts = attempts + 1"
                " WHERE entry_id = ?",
                (now + visibility, handle.token, handle.entry_id),
            )
            leases.append(Lease(job_id=row["job_id"], attempts=row["attempts"], handle=handle))
        return leases

    return take


def retry_later(
    lease: Lease, delay: float, clock: Callable[[], float]
) -> Callable[[sqlite3.Connection], None]:
    """The write that ends the lease and makes its entry due in `delay` seconds."""
    handle = handle_of(lease)

    def retry(conn: sqlite3.Connection) -> None:
        now = clock()
        conn.execute(
            "UPDATE outbox SET due_at = ?, leased_until = 0, lease_token = ''"
            " WHERE entry_id = ? AND lease_token = ? AND leased_until > ?",
            (now + delay, handle.entry_id, handle.token, now),
        )

    return retry


def find_job(conn: sqlite3.Connection, job: Job) -> Job | None:
    """The job a create of `job` would duplicate: the client's job under the same idempotency
    key, or a job with the same id (a retry of a create that did commit)."""
    found = None
    if job.idempotency_key:
        found = job_by_key(conn, job.client, job.idempotency_key)
    return found or job_by_id(conn, job.job_id)


def job_by_id(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"{rows.SELECT_JOBS} WHERE job_id = ?", (job_id,)).fetchone()
    return None if row is None else rows.job_from_row(row)


def job_by_key(conn: sqlite3.Connection, client: str, idempotency_key: str) -> Job | None:
    row = conn.execute(
        f"{rows.SELECT_JOBS} WHERE client = ? AND idempotency_key = ?", (client, idempotency_key)
    ).fetchone()
    return None if row is None else rows.job_from_row(row)


def find_where(query: JobQuery, start: tuple[float, str] | None) -> tuple[str, list[object]]:
    """find_jobs' WHERE clause (placeholders only) and its parameters. A job's service is the
    first of its `services` (a JSON array)."""
    clauses = ["1"]
    params: list[object] = []
    if query.client:
        clauses.append("client = ?")
        params.append(query.client)
    if query.services:
        marks = ", ".join("?" * len(query.services))
        clauses.append(f"json_extract(services, '$[0]') IN ({marks})")
        params.extend(sorted(s.value for s in query.services))
    if query.states:
        clauses.append(f"state IN ({', '.join('?' * len(query.states))})")
        params.extend(sorted(s.value for s in query.states))
    if query.created_from is not None:
        clauses.append("created_at >= ?")
        params.append(query.created_from)
    if query.created_before is not None:
        clauses.append("created_at < ?")
        params.append(query.created_before)
    if start is not None:
        clauses.append("(created_at < ? OR (created_at = ? AND job_id < ?))")
        params.extend((start[0], start[0], start[1]))
    return " AND ".join(clauses), params


def add_to_outbox(conn: sqlite3.Connection, jobs: list[Job], due: float) -> list[int]:
    """Outbox entries for `jobs`, due at `due`, in one statement; their entry ids."""
    if not jobs:
        return []
    cursor = conn.execute(
        rows.insert_many("outbox", ["job_id", "due_at", "client", "priority"], len(jobs)),
        [v for job in jobs for v in (job.job_id, due, job.client, job.priority.rank)],
    )
    # One writer holds the lock: the rows got consecutive ids, in order.
    first = cursor.lastrowid - len(jobs) + 1  # type: ignore[operator]
    return list(range(first, first + len(jobs)))


def outbox_depths(conn: sqlite3.Connection, now: float) -> dict[str, dict[Priority, QueueDepth]]:
    """Store.outbox_depths: the entries due at `now`, by client and priority."""
    depths: dict[str, dict[Priority, QueueDepth]] = {}
    # Due entries only (outbox_by_due): not the submitted jobs' entries, which wait for their
    # callback deadline, days of them.
    for row in conn.execute(
        "SELECT client, priority, SUM(attempts = 0) AS fresh, SUM(attempts > 0) AS other"
        " FROM outbox INDEXED BY outbox_by_due WHERE due_at <= ? GROUP BY client, priority",
        (now,),
    ):
        priority = _PRIORITY_BY_RANK[row["priority"]]
        depths.setdefault(row["client"], {})[priority] = QueueDepth(row["fresh"], row["other"])
    return depths


def drop_from_outbox(conn: sqlite3.Connection, entry_ids: list[int]) -> None:
    """Delete the outbox entries of these ids, whoever holds a lease of them."""
    for start in range(0, len(entry_ids), DROP_BATCH):
        chunk = entry_ids[start : start + DROP_BATCH]
        # Only placeholders are spliced in, never a value.
        conn.execute(f"DELETE FROM outbox WHERE entry_id IN ({rows.marks(len(chunk))})", chunk)  # noqa: S608


def insert_events(conn: sqlite3.Connection, events: list[JobEvent], now: float) -> list[JobEvent]:
    """Insert events recorded at `now` in one statement; returns them with their cursors."""
    if not events:
        return []
    cursor = conn.execute(
        rows.insert_many("events", rows.EVENT_COLUMNS, len(events)),
        [value for e in events for value in rows.event_values(e, now)],
    )
    # One writer holds the lock: the rows got consecutive sequence numbers, in order.
    first = cursor.lastrowid - len(events) + 1  # type: ignore[operator]
    return [e.replace(record_time=now, cursor=str(first + i)) for i, e in enumerate(events)]


def take_rate(conn: sqlite3.Connection, now: float, limit: int, window: float) -> float:
    """A slot of the rate limit at `now` (Store.acquire_rate): 0.0 when taken, else the seconds
    until one frees.

    The slots in the window are counted as the span of their row ids, three lookups whatever
    the limit, where count(*) reads every row (a sync call's write waits for it). Rows are
    added with the next row id, in the order of their times, and the oldest deleted first, so
    the span is their count; should the clock step back, a row deleted out of order leaves a
    gap, and the span counts more than there are (a slot refused a little early, never one too
    many) until the rows before the gap have gone."""
    conn.execute("DELETE FROM rate_log WHERE taken_at <= ?", (now - window,))
    first, last, oldest = conn.execute(
        "SELECT (SELECT min(rowid) FROM rate_log), (SELECT max(rowid) FROM rate_log),"
        " (SELECT min(taken_at) FROM rate_log)"
    ).fetchone()
    if first is None or last - first + 1 < limit:
        conn.execute("INSERT INTO rate_log (taken_at) VALUES (?)", (now,))
        return 0.0
    return float(oldest + window - now)
