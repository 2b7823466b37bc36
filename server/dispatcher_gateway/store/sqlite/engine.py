"""One SQLite connection behind one worker thread, writing in group commits. It knows nothing of
what it stores: it runs the callables it is given, each against the connection.

Threading: async callers hand the worker operations through a queue and await an asyncio future,
so the event loop never waits on the disk. The worker answers a whole group at once, with one
call into each caller's loop: a wake-up of the loop (a syscall, and a turn of the GIL) per group
rather than per operation.

Durability: the worker takes every write queued at that moment and commits them in one
transaction, and resolves each caller's future only after the COMMIT returned: a single commit's
fsync would otherwise bound the writes per second, and grouped, synchronous=FULL costs little
more than NORMAL under load. The group is first applied as if nothing will fail, consecutive
operations of one batch kind in one call (a few multi-row statements for all of them: each
statement costs this thread a turn of the GIL). Should one of them fail, the transaction is
undone and the group applied again, each operation inside its own SAVEPOINT, so that one failing
operation does not undo the others.

A write may be marked not `durable`: one whose loss in a crash of the machine (not of the
process: a commit is in the kernel's page cache once COMMIT returns) is harmless, such as an
outbox entry's ack (lost, the entry is handed out again and found done). A group made only of
those commits with synchronous=NORMAL, no fsync of its own; the next durable group's fsync
flushes the WAL with it. Either way nothing partial is written.

Processes sharing the file (a gateway's workers, `turns`) write one at a time, and a commit's
fsync inside the turn would hold every other worker's commit behind this one's wait on the disk.
There, the commit inside the turn is not flushed (synchronous=NORMAL) and the worker thread
flushes the WAL (fdatasync) once its turn is over, before it answers anyone: the flushes of the
workers overlap. What another worker's commit made visible is flushed too by the flush that
follows what read it, so nothing read is answered before it is on disk: every worker answers its
reads, as its writes, only after such a flush.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from ...core.errors import StoreUnavailable
from .queued import Batch, Op, Outcome, Post, deliver, runs, wanted

T = TypeVar("T")

# Bounds how long the first write of a group waits for the others to be applied.
MAX_GROUP: Final = 256
_NORMAL: Final = 1
"""PRAGMA synchronous = NORMAL, as a number."""

# SQLite's primary result codes that mean the database cannot be used right now, as opposed to
# a constraint or a programming error.
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_AUTH,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_READONLY,
    }
)


@dataclass(slots=True)
class _Done:
    """A group committed (or failed), to answer once its turn is over."""

    outcomes: list[Outcome]
    notes: list[Any]
    flush: bool
    """Whether the WAL is to be flushed before answering (its commit was not)."""


class Writer:
    """The worker thread and its queue. `connect` opens the connection (in the worker thread);
    `on_commit` is called in the worker thread after each COMMIT with what the group's
    operations handed to `note`, when they noted anything; what it hands to `post` reaches its
    loop with the group's answers."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        on_commit: Callable[[list[Any]], None],
        *,
        turns: Path | None = None,
        wal: Path | None = None,
    ) -> None:
        """`turns`: a file whose lock (flock) each group's transaction holds, when other
        processes write to the same database (a gateway's workers). They then take turns at
        once: without it, one finding the database locked sleeps in SQLite's busy handler
        (1, 2, 5, 10 ms ...) however soon the lock is released. `wal`: the database's WAL,
        flushed after each turn (see above), with `turns`."""
        self._name = name
        self._turns = turns
        self._turns_fd: int | None = None
        self._connect = connect
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._notes: list[Any] = []
        """Touched by the worker thread only."""
        self._synchronous = (0, 0)
        """The connection's PRAGMA synchronous as opened (durable groups), and as set now."""
        self._wal = wal if turns is not None else None
        self._reads: list[Outcome] = []
        """Reads answered, waiting for the flush that follows the turn (with `_wal` only)."""
        self._posts: list[Post] = []
        """What `on_commit` posted, to send with the group's answers. Worker thread only."""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"store {self._name} is already open")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue = queue.SimpleQueue()
        self._stopped = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._serve, args=(ready,), name="sqlite-store", daemon=True
        )
        thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.wrap_future(self._stopped)
            thread.join()
            raise
        self._thread = thread

    async def stop(self) -> None:
        """Finish what is queued, then close the connection. Stopping twice does nothing."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._queue.put(None)
        await asyncio.wrap_future(self._stopped)
        thread.join()

    async def run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool = False,
        batch: Batch | None = None,
        durable: bool = True,
    ) -> T:
        """`fn(connection)` in the worker thread; a write in a transaction it shares with the
        writes queued beside it, answered once that transaction is committed; a write not
        `durable` need not be flushed to disk by its own commit (see above)."""
        if self._thread is None:
            raise StoreUnavailable(f"store {self._name} is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(Op(fn, future, write, batch, durable))
        return await future

    def note(self, items: list[Any]) -> None:
        """From an operation, in the worker thread: hand `items` to `on_commit` once the group
        is committed (not if the operation is undone)."""
        self._notes.extend(items)

    def post(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
    ) -> None:
        """From `on_commit`, in the worker thread: `callback(*args)` on `loop`, after the group's
        answers and in the same call into that loop (call_soon_threadsafe would wake it once
        for each)."""
        self._posts.append((loop, callback, args))

    def translate(self, exc: BaseException, *, always: bool = False) -> BaseException:
        """StoreUnavailable, naming the file, for what means the database cannot be used;
        anything else as it is, unless `always`."""
        if isinstance(exc, StoreUnavailable):
            return exc
        if isinstance(exc, OSError) or is_unavailable(exc) or always:
            failure = StoreUnavailable(f"store {self._name}: {exc}")
            failure.__cause__ = exc
            return failure
        return exc

    # The worker thread

    def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            ready.set_exception(self.translate(exc))
            self._stopped.set_result(None)
            return
        if self._turns is not None:
            try:
                self._turns_fd = os.open(self._turns, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                conn.close()
                ready.set_exception(self.translate(exc))
                self._stopped.set_result(None)
                return
        opened = int(conn.execute("PRAGMA synchronous").fetchone()[0])
        self._synchronous = (opened, opened)
        ready.set_result(None)
        try:
            self._serve_queue(conn)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            if self._turns_fd is not None:
                os.close(self._turns_fd)
                self._turns_fd = None
            self._fail_queued()
            self._stopped.set_result(None)

    def _serve_queue(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            more, stopping = self._queued(MAX_GROUP - 1)
            writes = self._answer_reads(conn, [first, *more])
            done: _Done | None = None
            if writes:
                with self._turn():
                    if self._turns_fd is not None and not stopping and len(writes) < MAX_GROUP:
                        # What came while another process had its turn joins this group: one
                        # commit (one wait on the disk) for it rather than a turn of its own.
                        more, stopping = self._queued(MAX_GROUP - len(writes))
                        writes += self._answer_reads(conn, more)
                    done = self._commit_group(conn, writes)
            self._finish(done)
            if stopping:
                return

    def _queued(self, limit: int) -> tuple[list[Op], bool]:
        """Up to `limit` operations queued now, without waiting; and whether the stop is
        queued among them."""
        ops: list[Op] = []
        while len(ops) < limit:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is None:
                return ops, True
            ops.append(op)
        return ops, False

    def _answer_reads(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Op]:
        """Answer the reads among `ops`; returns the writes, to commit as one group.

        Reads first: every read here was queued before any write here returned, so answering
        it from the state before them is as correct as after, and the writes stay one group.
        They are answered before the commit's wait on the disk."""
        reads = [self._read(conn, op) for op in ops if not op.write and wanted(op)]
        if self._flushes_after_turn:
            self._reads += reads
        elif reads:
            deliver(reads)
        return [op for op in ops if op.write and wanted(op)]

    @property
    def _flushes_after_turn(self) -> bool:
        """Whether this thread flushes the WAL itself, after its turn (see above)."""
        return self._wal is not None and self._synchronous[0] > _NORMAL

    def _read(self, conn: sqlite3.Connection, op: Op) -> Outcome:
        try:
            return op, op.fn(conn), None
        except Exception as exc:
            return op, None, self.translate(exc)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn to write, among those sharing `turns`."""
        fd = self._turns_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _commit_group(self, conn: sqlite3.Connection, live: list[Op]) -> _Done:
        """Commit the group; its outcomes are answered by `_finish`."""
        durable = any(op.durable for op in live)
        flush = durable and self._flushes_after_turn
        try:
            self._set_synchronous(conn, durable=durable and not flush)
            outcomes = self._apply_all(conn, live)
            if outcomes is None:
                outcomes = self._apply_each(conn, live)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failure = self.translate(exc, always=True)
            return _Done([(op, None, failure) for op in live], [], flush=False)
        answers = [(op, v, e if e is None else self.translate(e)) for op, v, e in outcomes]
        return _Done(answers, self._notes, flush)

    def _finish(self, done: _Done | None) -> None:
        """After the turn: flush the WAL when this thread does (see above), then answer the
        reads and writes, and hand the group's notes to `on_commit`."""
        reads, self._reads = self._reads, []
        if done is None and not reads:
            return
        outcomes = reads + (done.outcomes if done is not None else [])
        if reads or (done is not None and done.flush):
            try:
                self._flush_wal()
            except OSError as exc:
                # Committed, but not known to be on disk: answered as the store being unusable
                # (a webhook is sent again, and found a duplicate); the tails find the events.
                failure = self.translate(exc)
                deliver([(op, None, failure) for op, _, _ in outcomes])
                return
        try:
            if done is not None and done.notes:
                self._on_commit(done.notes)
        finally:
            posts, self._posts = self._posts, []
            deliver(outcomes, posts)

    def _flush_wal(self) -> None:
        if self._wal is None:
            return
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no WAL: every commit is in the database file, flushed by its checkpoint
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _set_synchronous(self, conn: sqlite3.Connection, *, durable: bool) -> None:
        """The group's commit flushes to disk as the connection was opened to when `durable`,
        else at most as NORMAL does (no fsync in WAL mode)."""
        opened, now = self._synchronous
        mode = opened if durable else min(opened, _NORMAL)
        if mode != now:
            conn.execute(f"PRAGMA synchronous = {mode}")
            self._synchronous = (opened, mode)

    def _apply_all(self, conn: sqlite3.Connection, live: list[Op]) -> list[Outcome] | None:
        """Apply the group in one transaction, as if none will fail: no SAVEPOINT each (every
        statement is a GIL round trip for this thread). None, with the transaction undone, if
        one failed: the group is then applied again by `_apply_each`."""
        self._notes = []
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[Outcome] = []
        for run in runs(live):
            try:
                batch = run[0].batch
                if len(run) == 1 or batch is None:
                    outcomes.append((run[0], run[0].fn(conn), None))
                    continue
                items = [op.batch.item for op in run if op.batch is not None]
                values = batch.apply_all(conn, items)
                outcomes.extend((op, value, None) for op, value in zip(run, values, strict=True))
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                conn.execute("ROLLBACK")
                return None
        return outcomes

    def _apply_each(self, conn: sqlite3.Connection, live: list[Op]) -> list[Outcome]:
        """Apply the group in one transaction, each operation inside its own SAVEPOINT, so that
        one failing does not undo the others."""
        self._notes = []
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[Outcome] = []
        for op in live:
            conn.execute("SAVEPOINT op")
            noted = len(self._notes)
            try:
                value = op.fn(conn)
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                del self._notes[noted:]
                outcomes.append((op, None, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((op, value, None))
        return outcomes

    def _fail_queued(self) -> None:
        closed = StoreUnavailable(f"store {self._name} is closed")
        failed: list[Outcome] = []
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                failed.append((op, None, closed))
        if failed:
            deliver(failed)


def is_unavailable(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _UNAVAILABLE_CODES
    )
