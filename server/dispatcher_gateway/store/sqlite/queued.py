"""An operation queued for the writer's thread (engine.py), and its answer: how operations of
one batch kind are taken together, and how outcomes reach their callers' loops."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

MAX_BATCH: Final = 64
"""Operations of one batch call: 64 rows of 15 columns stay within the 999 parameters that
SQLite builds older than 3.32 allow."""

ApplyAll = Callable[[sqlite3.Connection, list[Any]], list[Any]]
"""Does many operations of one kind at once, given their items in order; returns their values in
the same order. Raising undoes them all (the group is then applied op by op)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """What an operation does, for doing it together with the operations of the same `apply_all`
    queued next to it; the operation's own callable does it too, alone."""

    apply_all: ApplyAll
    item: Any


@dataclass(slots=True)
class Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    """Of the caller's loop: only that loop sets it (`_settle`); the worker reads whether it is
    cancelled, and an operation its caller gave up on before it ran is not run."""
    write: bool
    batch: Batch | None = None
    durable: bool = True


Outcome = tuple[Op, Any, BaseException | None]


Post = tuple[asyncio.AbstractEventLoop, Callable[..., None], tuple[Any, ...]]


def runs(ops: list[Op]) -> Iterator[list[Op]]:
    """The operations in order: each run of consecutive operations of one batch kind as one
    list (of at most MAX_BATCH), others alone."""
    run: list[Op] = []
    for op in ops:
        if run and (op.batch is None or not _same_kind(op, run[0])):
            yield run
            run = []
        if op.batch is None:
            yield [op]
            continue
        run.append(op)
        if len(run) == MAX_BATCH:
            yield run
            run = []
    if run:
        yield run


def _same_kind(op: Op, other: Op) -> bool:
    return (
        op.batch is not None
        and other.batch is not None
        and op.batch.apply_all == other.batch.apply_all
    )


def wanted(op: Op) -> bool:
    # Read across threads: a cancel that lands just after this is a caller that gave up on an
    # operation already running, whose outcome `_settle` then drops, as gRPC drops the answer
    # of a call cancelled in flight.
    return not op.future.cancelled()


def _settle(outcomes: list[Outcome], posts: list[Post]) -> None:
    """On the callers' loop: answer each caller still waiting, then run what was posted."""
    for op, value, error in outcomes:
        if op.future.done():
            continue
        if error is None:
            op.future.set_result(value)
        else:
            op.future.set_exception(error)
    for loop, callback, args in posts:
        try:
            callback(*args)
        except Exception as exc:
            # As the loop reports a callback of its own that raises; the others still run.
            loop.call_exception_handler(
                {"message": f"Exception in callback {callback!r}", "exception": exc}
            )


def deliver(outcomes: list[Outcome], posts: list[Post] | None = None) -> None:
    """From the worker thread: hand the outcomes, and what was posted, to their loops, one call
    per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Outcome], list[Post]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), ([], []))[0].append(outcome)
    for post in posts or ():
        by_loop.setdefault(post[0], ([], []))[1].append(post)
    for loop, (batch, posted) in by_loop.items():
        # A closed loop has nobody left waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, batch, posted)
