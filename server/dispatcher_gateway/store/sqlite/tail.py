"""tail() on the SQLite store: a commit that appended events hands them, with their cursors, to
the tails of this process (`Feeds`), so the live path never reads back what it just wrote; a
tail reads the file only to catch up (on start, after a gap, or to see another process's writes
on its poll)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final

from ...core.model import JobEvent

TAIL_BATCH: Final = 500
# Commits in this process wake tails at once; the poll catches writers in other processes.
TAIL_POLL_INTERVAL: Final = 1.0
GAP_WAIT: Final = 0.05
"""Seconds a tail handed events past a gap waits for the events missing before it reads them from
the file: a gateway's workers each hand their commits over after their own flush to disk
(engine.py), so another worker's earlier commit may come a few milliseconds after this one's."""

ReadAfter = Callable[[int, int], Awaitable[list[JobEvent]]]
"""Reads up to `limit` events after a sequence number from the file, in cursor order."""
Post = Callable[..., None]
"""Calls `callback(*args)` on `loop`: post(loop, callback, *args)."""


def _call_soon_threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
) -> None:
    # A closed loop has no tail left to feed.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    loop.call_soon(callback, *args)


class _Feed:
    """A tail's inbox for events committed by this process: filled from the worker thread
    (through the tail's event loop), emptied by the tail."""

    __slots__ = ("events", "loop", "promised", "ready", "woken")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self.events: list[JobEvent] = []
        self.woken = False
        """Another process committed: read the file."""
        self.promised = 0
        """The newest cursor of the events sent to this feed (set under Feeds' lock): they
        reach it, even once it is no longer in Feeds, as the push is on its way."""

    def push(self, events: list[JobEvent]) -> None:
        # On the tail's loop.
        self.events.extend(events)
        self.ready.set()

    def wake(self) -> None:
        # On the tail's loop.
        self.woken = True
        self.ready.set()


class Feeds:
    """The feeds of the tails waiting in this process, and the newest cursor it committed."""

    def __init__(self) -> None:
        self._feeds: set[_Feed] = set()
        # Guards _feeds and _committed: a feed added sees either the newest commit's cursor or
        # that commit's events.
        self._lock = threading.Lock()
        self._committed = 0
        """The newest cursor committed, by this process or a neighbour that said so (0: none
        yet)."""
        self._wakes = 0
        """How many times another process said it committed (wake.py's Neighbours)."""

    def publish(self, events: list[JobEvent], post: Post = _call_soon_threadsafe) -> None:
        """From the worker thread, after a commit: the events it appended, in cursor order.
        `post`: how a call reaches a feed's loop (the writer's `post`, with its answers)."""
        with self._lock:
            self._committed = max(self._committed, int(events[-1].cursor))
            feeds = self._promise(events)
        for feed in feeds:
            post(feed.loop, feed.push, events)

    def deliver(self, events: list[JobEvent] | None) -> None:
        """Another process committed `events` (wake.py's Neighbours): pushed to every tail as
        this process's are; None (not sent): every tail reads the file."""
        with self._lock:
            if events:
                self._committed = max(self._committed, int(events[-1].cursor))
                feeds = self._promise(events)
            else:
                self._wakes += 1
                feeds = list(self._feeds)
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for feed in feeds:
            # On the feed's own loop (Neighbours calls from it), without waking it up.
            post = _call_soon if feed.loop is here else _call_soon_threadsafe
            if events:
                post(feed.loop, feed.push, events)
            else:
                post(feed.loop, feed.wake)

    def _promise(self, events: list[JobEvent]) -> list[_Feed]:
        """Under the lock: the feeds `events` are to be pushed to, each told so."""
        newest = int(events[-1].cursor)
        for feed in self._feeds:
            feed.promised = max(feed.promised, newest)
        return list(self._feeds)

    @contextlib.contextmanager
    def feeding(self, feed: _Feed) -> Iterator[tuple[int, int]]:
        """Push every commit's appended events to `feed` while inside the block; yields the
        newest cursor committed and the count of other processes' wake-ups before the first
        push."""
        with self._lock:
            self._feeds.add(feed)
            committed, wakes = self._committed, self._wakes
        try:
            yield committed, wakes
        finally:
            with self._lock:
                self._feeds.discard(feed)


class Tail(AsyncIterator[JobEvent]):
    """Every event after a cursor, without end. Between two `__anext__` calls it holds nothing
    but its buffer and its feed (out of `Feeds`), so a cancelled or abandoned tail leaves nothing
    behind in the store."""

    def __init__(self, feeds: Feeds, read_after: Callable[[], ReadAfter], after: int) -> None:
        """`read_after` gives the file reader at each read (looked up late, so a test may watch
        the store's reads)."""
        self._feeds = feeds
        self._read_after = read_after
        self._seq = after
        self._buffer: deque[JobEvent] = deque()
        self._polled = True
        """Whether the next fill reads the file first (on start, and after each quiet poll)."""
        self._wakes = 0
        """The other processes' wake-ups seen when this tail last read the file."""
        self._held: list[JobEvent] = []
        """Events handed over past a gap, in cursor order, until the events before them come."""
        self._feed: _Feed | None = None
        """One feed for every wait: what was on its way to it while the tail was not waiting
        (its buffer being read) is in it at the next."""
        self._gap_until = 0.0
        """When the file is read for the events of the gap, if they have not come (loop time)."""

    async def __anext__(self) -> JobEvent:
        while not self._buffer:
            await self._fill()
        return self._buffer.popleft()

    async def _fill(self) -> None:
        feed = self._feed = self._feed or _Feed()
        # Listen before reading, so a commit between the read and the wait is not missed.
        with self._feeds.feeding(feed) as (committed, wakes):
            newest = max(int(self._held[-1].cursor) if self._held else self._seq, feed.promised)
            if committed > newest or self._polled or wakes != self._wakes:
                # Behind what this process committed, or another process did (or time to look
                # for other writers).
                self._polled = False
                self._wakes = wakes
                self._held = []
                events = await self._read_after()(self._seq, TAIL_BATCH)
                if events:
                    self._take(events)
                    return
            while True:
                try:
                    if self._held:
                        wait = self._gap_until - asyncio.get_running_loop().time()
                    else:
                        wait = TAIL_POLL_INTERVAL
                    async with asyncio.timeout(max(wait, 0.0)):
                        await feed.ready.wait()
                except TimeoutError:
                    # A quiet poll, or a gap the events pushed did not fill: read the file.
                    self._polled = True
                    return
                feed.ready.clear()
                pushed, feed.events = feed.events, []
                if feed.woken:
                    # Another process committed: its events are in the file only.
                    feed.woken = False
                    self._polled = True
                self._follow_on(pushed)
                if self._buffer or self._polled:
                    return

    def _follow_on(self, pushed: list[JobEvent]) -> None:
        """Take, in cursor order, the events pushed (and held) that follow on from the last one
        taken; hold those past a gap (another process wrote in between)."""
        if not self._held and _follows(pushed, self._seq):
            # The usual case: one commit's events, or several in order.
            self._take(pushed)
            return
        events = sorted([*self._held, *pushed], key=lambda event: int(event.cursor))
        gap = bool(self._held)
        self._held = []
        for index, event in enumerate(events):
            seq = int(event.cursor)
            if seq <= self._seq:
                continue
            if seq != self._seq + 1:
                if not gap or self._buffer:  # a new gap: its wait starts now
                    self._gap_until = asyncio.get_running_loop().time() + GAP_WAIT
                self._held = events[index:]
                return
            self._take([event])

    def _take(self, events: list[JobEvent]) -> None:
        self._buffer.extend(events)
        self._seq = int(events[-1].cursor)


def _follows(events: list[JobEvent], seq: int) -> bool:
    """Whether `events` are those right after `seq`, in order, none missing or repeated."""
    return bool(events) and all(
        int(event.cursor) == seq + index for index, event in enumerate(events, 1)
    )
