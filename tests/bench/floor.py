"""The floors' durable writes (bare.py --store): rows written by a thread of their own in group
commits, as the gateway's SQLite store writes, and nothing else: no JSON, no job, no dedupe."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from typing import Final

Queued = tuple[bytes, "asyncio.Future[None]"]

MAX_GROUP: Final = 256
"""Rows in one transaction at most, as the gateway's writer groups."""


class GroupWriter:
    """Every row queued at the moment in one transaction (WAL, synchronous=FULL), each writer
    answered once it is committed; a failed commit is raised to each of its writers."""

    def __init__(self, path: str) -> None:
        self._queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB)")
        self._thread = threading.Thread(target=self._serve, name="floor-writer", daemon=True)
        self._thread.start()

    async def write(self, body: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((body, future))
        await future

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group, stopping = self._queued(first)
            failure = self._commit([body for body, _ in group])
            loop = group[0][1].get_loop()
            loop.call_soon_threadsafe(_answer, [future for _, future in group], failure)

    def _queued(self, first: Queued) -> tuple[list[Queued], bool]:
        """`first` and what is queued behind it now; whether the stop is among them."""
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return group, True
            group.append(more)
        return group, False

    def _commit(self, bodies: list[bytes]) -> sqlite3.Error | None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO rows (body) VALUES (?)", [(b,) for b in bodies])
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            return exc
        return None


def _answer(futures: list[asyncio.Future[None]], failure: sqlite3.Error | None) -> None:
    for future in futures:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)
