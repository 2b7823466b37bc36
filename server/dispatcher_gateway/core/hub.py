"""Live fan-out of the event log to the streams this replica holds.

One tail of the store per process feeds every stream; each stream has a bounded queue, so a slow
reader costs at most `backlog` events of memory, and is then ended (it resumes from the store).

A stream can also fall behind because its reader keeps up but this process does not: a gRPC stream
sends one message per turn of the event loop, and a loop saturated by webhooks turns less often
while webhooks bring more events. The webhook receiver then waits for such streams before it
records the next webhook (`yield_to_streams`): once a reader that is taking its events finds
LAG_HIGH more queued, webhooks wait until its stream is down to LAG_LOW, each for at most
PAUSE_MAX seconds. With the loop's turns left to the streams, that takes milliseconds; a stream
still behind after HOLD_MAX is the reader's own doing (its client reads slowly), and holds nobody
up until it is back at LAG_LOW. Nor does a reader that stopped reading (none of its takes in the
last READING seconds): either is ended at `backlog`, as before.

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
"""Events queued behind the one a stream's reader takes for webhooks to wait for that stream
(at most half the backlog)."""
LAG_LOW = 20
"""...and the events queued at which they go on (at most a fifth of LAG_HIGH)."""
READING = 0.05
"""Seconds since a lagging stream's reader last took an event for it to count as reading: one
whose gRPC writes are held by a client that stopped reading holds nobody up."""
HOLD_MAX = 0.5
"""Seconds a stream may hold webhooks back in one go: one still behind after that is slow on its
own."""
PAUSE_MAX = 0.1
"""Seconds a webhook waits at most for lagging streams before it is recorded anyway."""


class Subscription:
    """One stream's view of the live tail: a bounded queue of its client's events."""

    __slots__ = (
        "_closed",
        "_lags",
        "_ready",
        "backlog",
        "client",
        "lag",
        "matches",
        "queue",
        "since",
        "taken",
    )

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
        self.lag = _FINE
        """_FINE, _HOLDING (in the hub's lagging set) or _ON_ITS_OWN (behind, holding nobody)."""
        self.since = 0.0
        """When it began to hold webhooks back (time.monotonic)."""
        self.taken = 0.0
        """When, holding, its reader last took an event."""
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
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def reason(self) -> BaseException | None:
        """Why it was closed (what `get` raises), if it was."""
        return self._closed

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
                lags = self._lags
                if lags is not None:
                    behind = len(queue)
                    if behind <= lags.low:
                        if self.lag is not _FINE:
                            lags.discard(self)
                    elif self.lag is _HOLDING:
                        self.taken = time.monotonic()
                    elif behind >= lags.high and self.lag is _FINE:
                        lags.add(self)
                return event
            self._ready.clear()
            await self._ready.wait()


_FINE, _HOLDING, _ON_ITS_OWN = "fine", "holding", "on its own"
"""A Subscription's `lag`."""


class _Lagging:
    """The streams that hold webhooks back (module docstring), and an event set at each change."""

    def __init__(self, backlog: int) -> None:
        self.high = max(1, min(LAG_HIGH, backlog // 2))
        self.low = min(LAG_LOW, self.high // 5)
        self.subs: set[Subscription] = set()
        self._changed = asyncio.Event()

    def add(self, sub: Subscription) -> None:
        sub.lag = _HOLDING
        sub.since = sub.taken = time.monotonic()
        self.subs.add(sub)

    def discard(self, sub: Subscription, lag: str = _FINE) -> None:
        sub.lag = lag
        if sub in self.subs:
            self.subs.remove(sub)
            self._changed.set()
            self._changed = asyncio.Event()

    def holding(self) -> bool:
        """Whether a stream holds webhooks back: its reader took an event in the last READING
        seconds, and it has held them for less than HOLD_MAX. Any other is left on its own."""
        now = time.monotonic()
        done = [s for s in self.subs if now - s.taken >= READING or now - s.since >= HOLD_MAX]
        for sub in done:
            self.discard(sub, _ON_ITS_OWN)
        return bool(self.subs)

    async def changed(self) -> None:
        await self._changed.wait()


class EventHub:
    def __init__(self, *, backlog: int = DEFAULT_BACKLOG) -> None:
        self.backlog = backlog
        self._lagging = _Lagging(backlog)
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
        """Wait, at most PAUSE_MAX seconds, while a stream holds webhooks back (the module's
        docstring says which); whether it waited."""
        lagging = self._lagging
        if not lagging.holding():
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PAUSE_MAX):
                while lagging.holding():
                    await lagging.changed()
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

    async def follow(self, store: Store, after: str | None = None) -> None:
        """Feed the hub from the store's tail, from the event after `after` (by default its
        newest event) on, until cancelled. A stream that reads the store before the tail begins
        would miss what is recorded between its read and that newest event: a process that
        takes streams before this runs reads `after` first (GatewayApp).

        A tail that breaks (store unreachable) is reopened after the last event it delivered."""
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
