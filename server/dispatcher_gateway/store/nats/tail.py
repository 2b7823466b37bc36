"""A tail of the events stream: every event after a cursor, without end.

It long-polls an ephemeral pull consumer with ack none and checks the consumer sequence and
heartbeats, starting over after its last event on any gap. (Not nats-py's ordered consumer: its
heartbeat and reset tasks outlive a reader that was cancelled, and its resets fail silently while
NATS is away.) A tail holds a subscription and a server-side consumer between reads: close it
(aclose) when done; one dropped without closing is removed by the server after EPHEMERAL_IDLE."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from ...core.model import JobEvent
from .jetstream import (
    EPHEMERAL_IDLE,
    HEARTBEAT_STATUS,
    LEADER_POLL,
    NO_RESPONDERS_STATUS,
    JetStream,
    status,
    unavailable,
)

TAIL_BATCH: Final = 256
TAIL_EXPIRES: Final = 30.0
"""How long one pull request of a tail waits at the server for new events."""
TAIL_HEARTBEAT: Final = 1.0
"""Idle heartbeat of a tail's pull request; three missed mean the tail is lost."""


class Tail(AsyncIterator[JobEvent]):
    """Every message of `stream` on `subject` after sequence `after`, as `decode` makes them.
    A gap in the consumer sequence, missed heartbeats, a reconnect or a pull nobody answers (the
    node holding the consumer stopped) start a new consumer after the last event delivered; if
    that fails, __anext__ raises StoreUnavailable (the caller reopens the tail from its last
    cursor). `wire` gives the store's connection (StoreUnavailable while it is not open). Holds
    no task: cancelling __anext__ leaves nothing."""

    def __init__(
        self,
        wire: Callable[[], JetStream],
        *,
        stream: str,
        subject: str,
        after: int,
        decode: Callable[[Msg], JobEvent],
    ) -> None:
        self._wire = wire
        self._stream = stream
        self._subject = subject
        self._decode = decode
        self._seq = after
        self._buffer: deque[JobEvent] = deque()
        self._sub: Subscription | None = None
        self._js: JetStream | None = None
        self._consumer = ""
        self._delivered = 0
        self._outstanding = 0
        self._reconnects = -1
        self._unanswered = False

    @property
    def consumer(self) -> str:
        """The name of the server-side consumer the tail reads now ('' before its first read)."""
        return self._consumer

    async def __anext__(self) -> JobEvent:
        while not self._buffer:
            with unavailable():
                await self._fill()
        return self._buffer.popleft()

    async def aclose(self) -> None:
        await self._drop()

    async def _fill(self) -> None:
        js = self._wire()
        if self._sub is None or js is not self._js or js.reconnects != self._reconnects:
            if self._unanswered:
                # Not at once: a new consumer's interest may take a moment to reach this server.
                self._unanswered = False
                await asyncio.sleep(LEADER_POLL)
            await self._restart(js)
        assert self._sub is not None
        if self._outstanding == 0:
            await self._request_more(js)
        try:
            msg = await self._sub.next_msg(timeout=TAIL_HEARTBEAT * 3)
        except nats.errors.TimeoutError:
            await self._restart(js)
            return
        while True:
            self._take(msg)
            if self._sub is None or self._sub.pending_msgs == 0:
                return
            msg = await self._sub.next_msg(timeout=TAIL_HEARTBEAT)

    def _take(self, msg: Msg) -> None:
        found = status(msg)
        if found == HEARTBEAT_STATUS:
            return
        if found == NO_RESPONDERS_STATUS:
            # Nobody serves the consumer (asking again would spin): start over elsewhere.
            self._outstanding = 0
            self._unanswered = True
            self._sub_lost()
            return
        if found is not None:
            # The request ended (expired, or the server gave up on it): make another.
            self._outstanding = 0
            return
        self._outstanding -= 1
        meta = msg.metadata
        if meta.sequence.consumer != self._delivered + 1:
            # Something was lost in between; start over after what was delivered.
            self._sub_lost()
            return
        self._delivered = meta.sequence.consumer
        self._seq = meta.sequence.stream
        self._buffer.append(self._decode(msg))

    def _sub_lost(self) -> None:
        self._reconnects = -1

    async def _request_more(self, js: JetStream) -> None:
        assert self._sub is not None
        request = {
            "batch": TAIL_BATCH,
            "expires": int(TAIL_EXPIRES * 1e9),
            "idle_heartbeat": int(TAIL_HEARTBEAT * 1e9),
        }
        await js.request_next(self._stream, self._consumer, request, self._sub.subject)
        self._outstanding = TAIL_BATCH

    async def _restart(self, js: JetStream) -> None:
        await self._drop()
        self._js = js
        self._reconnects = js.reconnects
        self._consumer = await js.add_consumer(
            self._stream,
            api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._seq + 1,
                filter_subject=self._subject,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=EPHEMERAL_IDLE,
            ),
        )
        self._delivered = 0
        self._outstanding = 0
        self._sub = await js.subscribe()

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        consumer, self._consumer = self._consumer, ""
        js = self._js
        if js is None:
            return
        if sub is not None:
            await js.unsubscribe(sub)
        if consumer:
            await js.delete_consumer(self._stream, consumer)
