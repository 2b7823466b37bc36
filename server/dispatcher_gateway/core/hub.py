"""Live fan-out of the event log to the streams this replica holds.

One tail of the store per process feeds every stream; each stream has a bounded queue, so a slow
reader costs at most `backlog` events of memory, and is then ended (it resumes from the store).

A stream can also fall behind because its reader keeps up but this process does not: a gRPC stream
sends one message per turn of the event loop, and a loop saturated by webhooks turns less often
while webhooks bring more events. The webhook receiver then waits for such streams before it takes
the next webhook (`yield_to_streams`): while a stream lags by LAG_HIGH events and its reader is
taking them, webhooks pause until it is back under LAG_LOW, for at most PAUSE_MAX seconds each.
A reader that stopped reading holds nobody up: it is ended at `backlog`, as before.

The hub also keeps what it published in the last `RECENT_WINDOW` seconds. A stream reads the store
after it subscribes; a replicated store may answer that read from a replica a few milliseconds
behind the one the tail reads (NATS: a consumer on a follower), so an event the tail delivered just
before the subscription could be in neither. The stream takes those from `recent()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from .errors import ShuttingDown, SlowConsumer, StoreUnavailable
from .model import JobEvent
from .ports import Store

log = logging.getLogger("dispatcher_gateway.hub")

RETAIL_DELAY = 1.0
"""Seconds before a broken store tail is reopened."""
DEFAULT_BACKLOG = 1000
"""Events a stream may fall behind the live tail before it is ended."""
RECENT_WINDOW = 5.0
"""Seconds of published events the hub keeps for streams that just subscribed: far more than a
replica lags, short enough to cost little (at most RECENT_MAX events)."""
RECENT_MAX = 20_000
LAG_HIGH = 100
"""Events a stream whose reader is taking them may fall behind before webhooks wait for it."""
LAG_LOW = 20
"""...and the backlog under which they go on."""
READING = 0.05
"""Seconds since a lagging stream's reader last took an event for it to count as reading: one
whose gRPC writes are held by a client that stopped reading holds nobody up."""
PAUSE_MAX = 0.1
"""Seconds a webhook waits at most for lagging streams before it is taken anyway."""


class Subscription:
    """One stream's view of the live tail: a bounded queue of its client's events."""

    __slots__ = ("_closed", "_lags", "_ready", "backlog", "client", "matches", "queue", "taken")

    def __init__(
        self,
        client: str,
        matches: Callable[[JobEvent], bool],
        backlog: int,
        lags: _Lagging | None = None,
    ) -> None:
        self.client = client
        self.matches = matches
        self.backlog = backlog
        self.queue: collections.deque[JobEvent] = collections.deque()
        self.taken = 0.0
        """When the reader last took an event that left others queued (time.monotonic)."""
        self._lags = lags
        self._ready = asyncio.Event()
        self._closed: BaseException | None = None

    def offer(self, event: JobEvent) -> None:
        if self._closed is not None or not self.matches(event):
            return
        if len(self.queue) >= self.backlog:
            self.close(SlowConsumer(f"more than {self.backlog} events behind"))
            return
        self.queue.append(event)
        if len(self.queue) == LAG_HIGH and self._lags is not None:
            self._lags.add(self)
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def close(self, reason: BaseException) -> None:
        if self._closed is None:
            self._closed = reason
            self.queue.clear()
            self._ready.set()
            if self._lags is not None:
                self._lags.discard(self)

    async def get(self) -> JobEvent:
        """The next live event; raises the reason the subscription was closed."""
        while True:
            if self._closed is not None:
                raise self._closed
            queue = self.queue
            if queue:
                event = queue.popleft()
                if queue:
                    self.taken = time.monotonic()
                    if len(queue) == LAG_LOW and self._lags is not None:
                        self._lags.discard(self)
                return event
            self._ready.clear()
            await self._ready.wait()


class _Lagging:
    """The streams more than LAG_HIGH events behind (until back at LAG_LOW), and an event set
    while there are none."""

    def __init__(self) -> None:
        self.subs: set[Subscription] = set()
        self.none = asyncio.Event()
        self.none.set()

    def add(self, sub: Subscription) -> None:
        self.subs.add(sub)
        self.none.clear()

    def discard(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        if not self.subs:
            self.none.set()

    def reading(self) -> bool:
        """Whether a lagging stream's reader took an event in the last READING seconds."""
        now = time.monotonic()
        return any(now - sub.taken < READING for sub in self.subs)


class EventHub:
    def __init__(self, *, backlog: int = DEFAULT_BACKLOG) -> None:
        self.backlog = backlog
        self._lagging = _Lagging()
        self._by_client: dict[str, set[Subscription]] = collections.defaultdict(set)
        self._closed: BaseException | None = None
        self._recent: collections.deque[tuple[float, JobEvent]] = collections.deque(
            maxlen=RECENT_MAX
        )
        self._observers: list[Callable[[JobEvent], None]] = []

    def observe(self, observer: Callable[[JobEvent], None]) -> None:
        """Call `observer` with every event published, whoever's it is (it must be quick)."""
        self._observers.append(observer)

    def subscribe(self, client: str, matches: Callable[[JobEvent], bool]) -> Subscription:
        sub = Subscription(client, matches, self.backlog, self._lagging)
        if self._closed is not None:
            sub.close(self._closed)
        else:
            self._by_client[client].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._lagging.discard(sub)
        subs = self._by_client.get(sub.client)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_client[sub.client]

    def recent(self, client: str, after: int) -> list[JobEvent]:
        """The client's events published in the last RECENT_WINDOW seconds with a cursor after
        `after`, oldest first."""
        horizon = time.monotonic() - RECENT_WINDOW
        found = []
        for published, event in reversed(self._recent):
            if published < horizon or int(event.cursor) <= after:
                break
            if event.client == client:
                found.append(event)
        found.reverse()
        return found

    def publish(self, event: JobEvent) -> None:
        now = time.monotonic()
        recent = self._recent
        while recent and recent[0][0] < now - RECENT_WINDOW:
            recent.popleft()
        recent.append((now, event))
        for observer in self._observers:
            observer(event)
        for sub in tuple(self._by_client.get(event.client, ())):
            sub.offer(event)
            if sub.closed:
                # Cut off for falling behind: no longer a live stream, though its reader may
                # not notice (and unsubscribe) until gRPC lets its last writes out.
                self.unsubscribe(sub)

    @property
    def lagging(self) -> bool:
        """Whether a stream lags (a cheap test before `yield_to_streams`)."""
        return bool(self._lagging.subs)

    async def yield_to_streams(self) -> bool:
        """Wait, at most PAUSE_MAX seconds, while a stream whose reader is taking its events
        lags (see the module's docstring); whether it waited."""
        lagging = self._lagging
        if not lagging.subs or not lagging.reading():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lagging.none.wait(), PAUSE_MAX)
        return True

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._by_client.values())

    def close(self, reason: BaseException | None = None) -> None:
        """End every stream (drain): each reader gets `reason`."""
        self._closed = reason or ShuttingDown("the gateway is shutting down")
        for subs in self._by_client.values():
            for sub in subs:
                sub.close(self._closed)
        self._by_client.clear()
        self._lagging.subs.clear()
        self._lagging.none.set()

    async def follow(self, store: Store) -> None:
        """Feed the hub from the store's tail, from its newest event on, until cancelled.

        A tail that breaks (store unreachable) is reopened after the last event it delivered."""
        after: str | None = None
        while True:
            try:
                if after is None:
                    after = await store.last_cursor()
                tail = store.tail(after=after)
                try:
                    async for event in tail:
                        after = event.cursor
                        self.publish(event)
                finally:
                    # A tail may hold a subscription and a server-side consumer: release them now.
                    close = getattr(tail, "aclose", None)
                    if close is not None:
                        await close()
            except StoreUnavailable as exc:
                # Expected while the store is away: one line, no traceback, and try again.
                log.warning(
                    "event tail: store unavailable (%s); reopening after %s in %.0f s",
                    exc,
                    after,
                    RETAIL_DELAY,
                )
                await asyncio.sleep(RETAIL_DELAY)
            except Exception:
                log.exception(
                    "event tail failed; reopening after %s in %.0f s", after, RETAIL_DELAY
                )
                await asyncio.sleep(RETAIL_DELAY)
