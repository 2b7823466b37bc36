"""The embedded store backend: one SQLite file in WAL mode, for a single replica.

- engine.py: one connection behind one worker thread, writing in group commits; it knows no
  domain type (threading and durability are explained there).
- schema.py: the tables, and opening the file (WAL, synchronous, migration).
- rows.py: jobs and events as rows, by the codec every backend shares (store/codec.py).
- tail.py: tails fed by this process's commits, polling the file for other processes' writes.
- wake.py: Neighbours, the other processes of a gateway's workers, woken by each commit so that
  their tails read the file at once.
- store.py: SqliteStore, the `Store` contract as SQL.

Cursors: the decimal string of an event's `seq`, one global INTEGER PRIMARY KEY AUTOINCREMENT
sequence over every client's events: strictly increasing in commit order and never reused, so the
core may compare cursors with int(). '' stands for "before the first event".
"""

from .schema import BUSY_TIMEOUT_MS, SCHEMA_VERSION
from .store import SqliteStore
from .wake import Neighbours

__all__ = ["BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "Neighbours", "SqliteStore"]
