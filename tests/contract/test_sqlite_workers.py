"""What only the SQLite backend does for a gateway's workers (GATEWAY_WORKERS): several processes
on one file. The contract suite runs on them too (the `sqlite-workers` backend); their tails'
datagrams are in test_sqlite_tail.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from tests.support.sqlite_files import version_1_file
from tests.support.sqlite_workers import worker_stores


async def test_workers_opening_an_older_file_together_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    (await version_1_file(path)).close()
    # Both workers read version 1, then wait for the write lock this holds: the second to take
    # it finds the file migrated by the first.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    workers = worker_stores(path, time.time)
    opening = [asyncio.create_task(worker.open()) for worker in workers]
    await asyncio.sleep(0.2)
    holder.execute("COMMIT")
    holder.close()
    try:
        await asyncio.gather(*opening)
    finally:
        for worker in workers:
            await worker.close()
