"""The file's tables, and opening a connection to it: WAL mode, the durability asked for, the
schema created or checked."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Final

from ...core.errors import StoreUnavailable

SCHEMA_VERSION: Final = 4
"""Kept in the file's user_version: a file from a newer gateway is refused, not misread.
Version 2 added jobs.trace_context; version 3 jobs.not_before, submit_begun_at, retry_of,
retried_by and events_by_record_time; version 4 jobs.priority and the outbox's client and
priority (the order of the fair share: core/fairshare.py)."""
SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
STATEMENT_CACHE: Final = 1024
"""Prepared statements a connection keeps (Python's default: 128). A group commit writes its
rows in one statement per table, a text for each group size (up to queued.py's MAX_BATCH):
past 128 texts, statements were compiled again and again, each costing more than running it."""
BUSY_TIMEOUT_MS: Final = 5000
"""How long a write waits for another process's lock on the file before it fails as
unavailable."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    services TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    metadata TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    dispatch_id TEXT NOT NULL,
    result TEXT,
    error TEXT,
    last_event TEXT NOT NULL,
    trace_context TEXT NOT NULL DEFAULT '',
    not_before REAL NOT NULL DEFAULT 0,
    submit_begun_at REAL NOT NULL DEFAULT 0,
    retry_of TEXT NOT NULL DEFAULT '',
    retried_by TEXT NOT NULL DEFAULT '',
    priority TEXT NOT NULL DEFAULT 'normal'
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key
    ON jobs (client, idempotency_key) WHERE idempotency_key != '';
CREATE INDEX IF NOT EXISTS jobs_by_client_newest
    ON jobs (client, created_at DESC, job_id DESC);

CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    client TEXT NOT NULL,
    service TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    event_time REAL NOT NULL,
    dispatch_id TEXT NOT NULL,
    terminal INTEGER NOT NULL,
    record_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_client ON events (client, seq);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS events_by_record_time ON events (record_time);

CREATE TABLE IF NOT EXISTS dedupe (
    dedupe_key TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_by_age ON dedupe (seen_at);

CREATE TABLE IF NOT EXISTS outbox (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    leased_until REAL NOT NULL DEFAULT 0,
    lease_token TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS outbox_by_due ON outbox (due_at, entry_id);
CREATE INDEX IF NOT EXISTS outbox_by_client ON outbox (client, priority, due_at, entry_id);

CREATE TABLE IF NOT EXISTS rate_log (taken_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_log_by_time ON rate_log (taken_at);

CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    key BLOB NOT NULL
) WITHOUT ROWID;
"""

_ADDED_COLUMNS: Final = (
    (2, "ALTER TABLE jobs ADD COLUMN trace_context TEXT NOT NULL DEFAULT ''"),
    (3, "ALTER TABLE jobs ADD COLUMN not_before REAL NOT NULL DEFAULT 0"),
    (3, "ALTER TABLE jobs ADD COLUMN submit_begun_at REAL NOT NULL DEFAULT 0"),
    (3, "ALTER TABLE jobs ADD COLUMN retry_of TEXT NOT NULL DEFAULT ''"),
    (3, "ALTER TABLE jobs ADD COLUMN retried_by TEXT NOT NULL DEFAULT ''"),
    (4, "ALTER TABLE jobs ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'"),
    (4, "ALTER TABLE outbox ADD COLUMN client TEXT NOT NULL DEFAULT ''"),
    (4, "ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1"),
    (
        4,
        "UPDATE outbox SET client = (SELECT client FROM jobs WHERE jobs.job_id = outbox.job_id)"
        " WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = outbox.job_id)",
    ),
)
"""The columns each version added to a table an older file already has (its old rows read the
default; an outbox entry's client is its job's)."""


def connect(path: Path, *, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection for the thread that calls this, on the file at `path` (made, with its
    directory, when missing), in WAL mode and on the current schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=True, cached_statements=STATEMENT_CACHE
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"store {path}: cannot use WAL (got {mode})")
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # A statement that writes many rows (a group commit's) keeps a statement journal, the
        # pages it changes, to undo that statement alone; on disk, SQLite would create, write and
        # delete a temporary file for it at every commit. In memory it is those few pages.
        conn.execute("PRAGMA temp_store = MEMORY")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"store {path}: schema version {version} is newer than this gateway's {SCHEMA_VERSION}"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process opening the file at the same moment
        # (a gateway's workers) may have just migrated it.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            conn.execute("COMMIT")
            return
        # Before the schema's statements, which index some of the columns added.
        if version > 0:
            for added_in, statement in _ADDED_COLUMNS:
                if version < added_in:
                    conn.execute(statement)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
