"""Sharing the account's upstream rate between clients by weight.

Each client has a weight (the clients file's `weight=`, 1 by default). While several clients
have jobs waiting, the outbox hands out their entries in start-time fair queueing order: every
entry sent is charged 1/weight of virtual time to its client, a client's next entry starts at
the later of its last finish and the virtual time now, and the client whose next entry starts
first goes next. So two backlogged clients of weights 3 and 1 are sent 3:1; a client alone gets
the whole rate; a client that was idle starts at the virtual time now (it banked no credit, and
is owed no debt), and no client waits behind another's backlog. Within a client, the store hands
out its entries by priority, then in the order queued (ports.Store.lease).

Each replica's worker keeps a virtual clock of its own: each hands out what it sends in the
weighted proportions, so what all of them send together is in those proportions too, and nothing
but the outbox itself is shared.

The estimate (`estimate`) is the fluid model of that order: a job with k jobs of its own client
ahead is sent once k + 1 of its client's and, of every other client with jobs waiting, the lesser
of its backlog and (k + 1) x its weight / the client's weight have gone out, at the account's
rate. It is rough: it counts entries never handed out (not retries in their backoff, not entries
a worker holds leased, nor sync calls, which take slots of the same rate; on SQLite and in memory
only those due), assumes the rate is free now and the weights stay as they are, and reads the
backlog at most ESTIMATE_FRESHNESS old.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import math
from collections.abc import Callable, Iterable, Mapping

from .errors import StoreUnavailable
from .model import Priority, QueueDepth, QueueEstimate
from .ports import Store
from .retry import RateLimit

Weights = Callable[[str], float]
"""A client's weight (> 0) by its name."""

DEFAULT_WEIGHT = 1
ESTIMATE_FRESHNESS = 1.0
"""Seconds an estimate's reading of the outbox's backlog is used for."""


def equal_weights(client: str) -> float:
    return DEFAULT_WEIGHT


class FairShare:
    """The order in which backlogged clients' entries go out (start-time fair queueing)."""

    def __init__(self, weights: Weights = equal_weights) -> None:
        self._weights = weights
        self._finish: dict[str, float] = {}
        self._virtual = 0.0

    def plan(self, clients: Iterable[str], count: int) -> list[str]:
        """The clients of the next `count` entries to send, in order, if each of `clients` has
        that many waiting. Changes nothing: `charge` each entry as it is handed out."""
        heap: list[tuple[float, str]] = []
        finish: dict[str, float] = {}
        for client in set(clients):
            finish[client] = self._finish.get(client, 0.0)
            heapq.heappush(heap, (max(finish[client], self._virtual), client))
        picks: list[str] = []
        while heap and len(picks) < count:
            start, client = heapq.heappop(heap)
            picks.append(client)
            finish[client] = start + 1.0 / self._weight(client)
            heapq.heappush(heap, (finish[client], client))
        return picks

    def charge(self, client: str) -> None:
        """One entry of `client` was handed out."""
        start = max(self._finish.get(client, 0.0), self._virtual)
        self._finish[client] = start + 1.0 / self._weight(client)
        self._virtual = start

    def _weight(self, client: str) -> float:
        weight = self._weights(client)
        return weight if weight > 0 else DEFAULT_WEIGHT


def estimate(
    client: str,
    priority: Priority,
    backlog: Mapping[str, Mapping[Priority, QueueDepth]],
    *,
    weights: Weights,
    rate: RateLimit,
    now: float,
) -> QueueEstimate:
    """Where a job queued now stands, from the outbox's `backlog` before it (see the module
    doc for how rough it is)."""
    fresh = {other: {p: d.fresh for p, d in depths.items()} for other, depths in backlog.items()}
    return _estimate(client, priority, fresh, weights=weights, rate=rate, now=now)


def _estimate(
    client: str,
    priority: Priority,
    fresh: Mapping[str, Mapping[Priority, int]],
    *,
    weights: Weights,
    rate: RateLimit,
    now: float,
) -> QueueEstimate:
    """`estimate`, from the backlog's entries never handed out, by client and priority."""
    ahead = sum(n for p, n in fresh.get(client, {}).items() if p.rank <= priority.rank)
    mine = ahead + 1
    own_weight = weights(client) or DEFAULT_WEIGHT
    before = float(mine)
    for other, depths in fresh.items():
        if other != client:
            waiting = sum(depths.values())
            before += min(waiting, mine * (weights(other) or DEFAULT_WEIGHT) / own_weight)
    per_second = rate.limit / rate.window
    return QueueEstimate(ahead, now + (before - 1) / per_second)


def _fresh_counts(
    backlog: Mapping[str, Mapping[Priority, QueueDepth]],
    since: Mapping[tuple[str, Priority], int],
) -> dict[str, dict[Priority, int]]:
    """The entries never handed out, by client and priority: `backlog`'s plus `since`."""
    fresh = {owner: {p: d.fresh for p, d in depths.items()} for owner, depths in backlog.items()}
    for (owner, level), count in since.items():
        depths = fresh.setdefault(owner, {})
        depths[level] = depths.get(level, 0) + count
    return fresh


class QueueEstimates:
    """Estimates for jobs about to be queued, from the outbox's backlog as last read, read again
    in the background once ESTIMATE_FRESHNESS old (a Dispatch never waits for it), plus the jobs
    this process estimated since."""

    def __init__(
        self, store: Store, rate: RateLimit, *, weights: Weights, clock: Callable[[], float]
    ) -> None:
        self._store = store
        self._rate = rate
        self._weights = weights
        self._clock = clock
        self._backlog: dict[str, dict[Priority, QueueDepth]] = {}
        self._read_at = -math.inf
        self._reading: asyncio.Task[None] | None = None
        self._since: collections.Counter[tuple[str, Priority]] = collections.Counter()
        self._fresh: dict[str, dict[Priority, int]] = {}
        """`_backlog`'s entries never handed out plus `_since`, kept up to date as estimates
        are made (rather than merged again for each)."""

    def before_queueing(self, client: str, priority: Priority) -> QueueEstimate:
        """Where a job of `client` queued now will stand; counted as queued from now on (so
        that concurrent Dispatches stand one behind the other), whether or not it is."""
        now = asyncio.get_running_loop().time()
        if now - self._read_at > ESTIMATE_FRESHNESS and self._reading is None:
            self._reading = asyncio.create_task(self._read(), name="queue-estimates")
        found = _estimate(
            client, priority, self._fresh, weights=self._weights, rate=self._rate, now=self._clock()
        )
        self._since[(client, priority)] += 1
        depths = self._fresh.get(client)
        if depths is None:
            depths = self._fresh[client] = {}
        depths[priority] = depths.get(priority, 0) + 1
        return found

    async def _read(self) -> None:
        counted = collections.Counter(self._since)
        try:
            self._backlog = await self._store.outbox_depths()
            # What was counted before the read began is in it now.
            self._since -= counted
            self._fresh = _fresh_counts(self._backlog, self._since)
        except StoreUnavailable:
            pass  # the last reading stays; the next estimate tries again
        finally:
            self._read_at = asyncio.get_running_loop().time()
            self._reading = None
