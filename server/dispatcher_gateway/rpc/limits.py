"""Per-client limits, so that one client cannot take what the others need: its Dispatch calls a
second, the jobs it has waiting to be sent upstream, and the streams it holds open. Each refusal
is RESOURCE_EXHAUSTED with a google.rpc.RetryInfo.

Kept in this replica's memory, not in the store: a client spread over N replicas may have up to
N times its limits, and the jobs a replica counts are those it accepted since it started (a
restart forgets the queued ones). A job counts as queued from its acceptance until its first
event past QUEUED (sent upstream, answered, or failed), which this replica sees on its event
tail whichever replica recorded it.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..core.errors import RateLimited
from ..core.model import JobEvent, JobState
from ..core.retry import RateLimit

STREAM_RETRY_AFTER = 1.0
"""Seconds a client refused a stream is told to wait (its others end at the latest at their
maximum age)."""
QUEUE_RETRY_AFTER = 1.0
MOVED_ON_MEMORY = 4096
"""Jobs remembered as past QUEUED without being counted yet: the event that moves a job on may
come before the Dispatch call that created it has counted it."""


@dataclass(frozen=True, slots=True)
class ClientQuotas:
    max_streams: int = 1000
    """Streams (Subscribe, WatchJob) one client holds open at once."""
    max_queued: int = 10_000
    """Jobs one client has accepted and not yet sent upstream."""
    dispatch_rate: RateLimit = field(default_factory=lambda: RateLimit(100, 1.0))
    """Dispatch calls one client makes: `limit` at once, `limit` per `window` seconds after."""


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> float:
        """Take a token: 0.0, or the seconds until there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class ClientLimits:
    def __init__(
        self, quotas: ClientQuotas | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.quotas = quotas or ClientQuotas()
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._streams: dict[str, int] = {}
        self._queued: dict[str, set[str]] = {}
        self._moved_on: collections.OrderedDict[str, None] = collections.OrderedDict()

    # Dispatch calls

    def take_dispatch(self, client: str) -> None:
        rate = self.quotas.dispatch_rate
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(
                rate.limit / rate.window, float(rate.limit), now
            )
        wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(
                f"client {client!r} dispatches more than {rate.limit} times in "
                f"{rate.window:g} s; retry in {wait:.2f} s",
                retry_after=wait,
            )

    # Queued jobs

    def check_queue(self, client: str, *, accepted: int = 0) -> None:
        """`accepted`: jobs of the same call (a batch) already let through, not counted yet."""
        waiting = len(self._queued.get(client, ())) + accepted
        if waiting >= self.quotas.max_queued:
            raise RateLimited(
                f"client {client!r} has {waiting} jobs waiting to be sent upstream (at most "
                f"{self.quotas.max_queued}); retry once some are sent",
                retry_after=QUEUE_RETRY_AFTER,
            )

    def queued(self, client: str, job_id: str) -> None:
        """A job the client just had accepted, still QUEUED when the call returned."""
        if job_id in self._moved_on:
            del self._moved_on[job_id]
            return
        self._queued.setdefault(client, set()).add(job_id)

    def observe(self, event: JobEvent) -> None:
        """Every event this replica's tail delivers (EventHub.observe)."""
        if event.state is JobState.QUEUED:
            return
        jobs = self._queued.get(event.client)
        if jobs is not None and event.job_id in jobs:
            jobs.discard(event.job_id)
            if not jobs:
                del self._queued[event.client]
            return
        moved_on = self._moved_on
        moved_on[event.job_id] = None
        if len(moved_on) > MOVED_ON_MEMORY:
            moved_on.popitem(last=False)

    def waiting(self, client: str) -> int:
        return len(self._queued.get(client, ()))

    # Streams

    @contextlib.contextmanager
    def stream(self, client: str) -> Iterator[None]:
        held = self._streams.get(client, 0)
        if held >= self.quotas.max_streams:
            raise RateLimited(
                f"client {client!r} has {held} streams open (at most "
                f"{self.quotas.max_streams}); end one, or retry in {STREAM_RETRY_AFTER:g} s",
                retry_after=STREAM_RETRY_AFTER,
            )
        self._streams[client] = held + 1
        try:
            yield
        finally:
            left = self._streams[client] - 1
            if left:
                self._streams[client] = left
            else:
                del self._streams[client]
