"""SQLite files as an earlier release left them, for the tests of the schema's migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dispatcher_gateway.store.sqlite import SqliteStore

ADDED_SINCE_VERSION_1 = ("retried_by", "retry_of", "submit_begun_at", "not_before", "trace_context")
"""The jobs columns versions 2 and 3 added, newest first."""


async def version_1_file(path: Path) -> sqlite3.Connection:
    """A store file at `path` with the schema version 1 made (jobs without the columns added
    since, events without version 3's index by record time), and an open connection to it to
    fill it as that release would have; close it before a store opens the file."""
    store = SqliteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    for column in ADDED_SINCE_VERSION_1:
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("DROP INDEX events_by_record_time")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    return conn
