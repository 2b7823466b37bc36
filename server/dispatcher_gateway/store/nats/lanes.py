"""The outbox of the NATS store: a work queue in lanes, leased message by message.

The outbox lease. The consumer's ack_wait is fixed (provision.CLAIM_WAIT) and only covers the
instant between a pull and what follows it: every pulled message is at once nak'ed with a delay,
which sets that one message's redelivery deadline, so each call's visibility is honoured per
message. ack acks; retry_later naks with the delay. JetStream accepts an ack or a nak for any
delivery of a message, the one a later worker holds included, so the lease rule of the contract
is kept here: a lease remembers when its visibility runs out by the store's clock, and whether it
was ended, and an ack or retry on a lease that is not current is not sent. The server's deadline
is set `lease_grace` (by default the request timeout) after the lease's visibility: an ack or
retry sent while the lease was current reaches the server before the entry can be handed out
again, unless it is held up on the way for longer than that (its call would have failed as
unavailable). `attempts` is the message's deliveries before this one: a lease that ran out
counts, as a crashed worker may have submitted.

The outbox's lanes. Each client's entries of each priority are a subject of their own (a lane,
names.py) with a durable consumer of its own, made by the first create that queues on it (and
remembered by the process); lease(client=...) pulls the client's lanes in priority order, and
outbox_depths lists the consumers with their counts (never delivered: fresh; delivered and not
acked: other) in one request. Which client's lanes to pull next is core's choice
(core/fairshare.py). Entries queued on the single subject of a release before lanes are the lane
of client '' (the consumer "worker"), leased like any other; that client's normal entries are
queued there too (names.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ...core.model import Lease, Priority, QueueDepth
from ...core.ports import Clock
from .jetstream import JetStream
from .names import LANE_CONSUMER_PREFIX, OUTBOX_CONSUMER, Layout, lane_consumer
from .provision import lane_consumer_config

LEGACY_LANE: Final = ""
"""The client of the entries a release before lanes queued on the outbox's single subject."""
COUNTING_LAG: Final = 1.0
"""Seconds after this process queued an entry in a lane during which a lease that finds the lane
empty asks once more, waiting. JetStream answers a publish before it counts the message as
pending on the stream's consumers, which a goroutine of its own does (nats-server stream.go,
processJetStreamMsg: the PubAck is queued, then sigq.push); a no_wait pull that comes first is
answered 404, as for an empty lane, and the entry would wait for the outbox's next poll."""
COUNTING_WAIT: Final = 0.05
"""Seconds that second pull waits at most (it is answered as soon as a message is there)."""


class Lanes:
    """The outbox's lanes this process knows, and the lease of their entries. Errors are the
    wire's; the store says what they mean."""

    def __init__(
        self, wire: Callable[[], JetStream], layout: Layout, clock: Clock, lease_grace: float
    ) -> None:
        self.wire = wire
        self.layout = layout
        self.clock = clock
        self.lease_grace = lease_grace
        self.known: dict[str, dict[Priority, str]] = {
            LEGACY_LANE: {Priority.NORMAL: OUTBOX_CONSUMER}
        }
        """The consumers of the lanes this process knows: client -> priority -> name."""
        self._queued_at: dict[str, float] = {}
        """When this process last queued an entry in a lane (time.monotonic), by consumer."""

    def queued(self, client: str, priority: Priority) -> None:
        """This process has just queued an entry in the client's lane of this priority."""
        name = self.known.get(client, {}).get(priority)
        if name is not None:
            self._queued_at[name] = time.monotonic()

    async def lease(self, limit: int, visibility: float, client: str | None) -> list[Lease]:
        """Store.lease: the client's lanes (every lane known, when None) in priority order."""
        if client is None:
            await self.depths()  # learn the lanes other processes made
        lanes = sorted(
            (priority.rank, name)
            for owner, by_priority in self.known.items()
            if client is None or owner == client
            for priority, name in by_priority.items()
        )
        leases: list[Lease] = []
        for _, name in lanes:
            if len(leases) >= limit:
                break
            leases.extend(await self._lease_lane(name, limit - len(leases), visibility))
        return leases

    async def _lease_lane(self, consumer: str, limit: int, visibility: float) -> list[Lease]:
        js = self.wire()
        stream = self.layout.outbox_stream
        msgs = await js.pull(stream, consumer, {"batch": limit, "no_wait": True}, limit)
        queued_at = self._queued_at.get(consumer)
        if not msgs and queued_at is not None and time.monotonic() - queued_at < COUNTING_LAG:
            # Maybe not counted yet (COUNTING_LAG): a no_wait pull with an expiry waits for it.
            wait = {"batch": limit, "no_wait": True, "expires": int(COUNTING_WAIT * 1e9)}
            msgs = await js.pull(stream, consumer, wait, limit)
        # Read before the naks are sent: the server's deadlines come after it.
        expires = self.clock() + visibility
        await asyncio.gather(*(js.nak(msg.reply, visibility + self.lease_grace) for msg in msgs))
        return [
            Lease(
                job_id=msg.data.decode(),
                attempts=msg.metadata.num_delivered - 1,
                handle=OutboxHandle(msg.reply, expires),
            )
            for msg in msgs
        ]

    async def depths(self) -> dict[str, dict[Priority, QueueDepth]]:
        """Store.outbox_depths, learning the lanes other processes made on the way."""
        consumers = await self.wire().consumers(self.layout.outbox_stream)
        depths: dict[str, dict[Priority, QueueDepth]] = {}
        for info in consumers:
            config = info.config
            if info.name == OUTBOX_CONSUMER:
                lane: tuple[str, Priority] | None = (LEGACY_LANE, Priority.NORMAL)
            elif info.name.startswith(LANE_CONSUMER_PREFIX) and config.filter_subject:
                lane = self.layout.lane_of(config.filter_subject)
            else:
                lane = None
            if lane is None:
                continue
            client, priority = lane
            self.known.setdefault(client, {})[priority] = info.name
            fresh, other = info.num_pending or 0, info.num_ack_pending or 0
            if fresh or other:
                depths.setdefault(client, {})[priority] = QueueDepth(fresh, other)
        return depths

    async def ack(self, lease: Lease) -> None:
        handle = _handle_of(lease)
        if not handle.current(self.clock()):
            return
        await self.wire().ack(handle.reply)
        handle.ended = True

    async def retry_later(self, lease: Lease, delay: float) -> None:
        handle = _handle_of(lease)
        if not handle.current(self.clock()):
            return
        await self.wire().nak(handle.reply, delay)
        handle.ended = True

    async def ensure(self, client: str, priority: Priority) -> None:
        """Make the consumer of the client's lane of this priority, unless this process knows
        it (making it again is harmless: the same config)."""
        if priority in self.known.get(client, {}):
            return
        name = lane_consumer(client, priority)
        subject = self.layout.outbox_lane(client, priority)
        await self.wire().add_consumer(
            self.layout.outbox_stream, lane_consumer_config(name, subject)
        )
        self.known.setdefault(client, {})[priority] = name


@dataclass(eq=False, slots=True)
class OutboxHandle:
    """One lease of one outbox entry: one delivery of its message."""

    reply: str
    """The delivery's ack subject."""
    expires: float
    """The store's clock when the lease's visibility runs out (the server's deadline is later by
    the lease grace)."""
    ended: bool = False
    """Acked or retried: the lease is over."""

    def current(self, now: float) -> bool:
        return not self.ended and now < self.expires


def _handle_of(lease: Lease) -> OutboxHandle:
    if not isinstance(lease.handle, OutboxHandle):
        raise TypeError("the lease was not handed out by a NatsStore")
    return lease.handle
