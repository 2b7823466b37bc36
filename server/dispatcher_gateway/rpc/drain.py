"""The DispatchService calls running now, by client connection, and whether new ones are still
let in: what a drain (SIGTERM) waits for and refuses, and which connections it may close. The
CallGuard interceptor counts every call through here, so that no handler does its own
bookkeeping."""

from __future__ import annotations

import asyncio
import collections
import time

from ..core.errors import ShuttingDown
from .connections import Address, peer_address

REFUSAL = "the gateway is shutting down; retry, another replica will answer"


class Drain:
    def __init__(self) -> None:
        self.in_flight = 0
        """Calls running now. A drain waits for them (its streams end at once when the hub
        closes), not for other services' streams such as a health Watch."""
        self.draining = False
        """Set on SIGTERM: new calls are refused with UNAVAILABLE while those in flight finish."""
        self.idle = asyncio.Event()
        self.idle.set()
        self._running: collections.Counter[str] = collections.Counter()
        """Calls running now, by grpc peer (the client's end of its connection)."""
        self._ended: dict[str, float] = {}
        """Once draining: when each peer's last call ended (time.monotonic())."""

    def start(self) -> None:
        """Refuse every call from now on; those in flight go on."""
        self.draining = True

    def call(self, peer: str = "") -> _Call:
        """One call, counted while it runs (a context manager); ShuttingDown on entering it if
        the drain has begun. `peer`: grpc's name for the client's connection (context.peer()),
        none for the JSON face."""
        return _Call(self, peer)

    def arrive(self, peer: str) -> None:
        """A call begins (Drain.call)."""
        if self.draining:
            raise ShuttingDown(REFUSAL)
        self.in_flight += 1
        self._running[peer] += 1
        self.idle.clear()

    def leave(self, peer: str) -> None:
        """A call ends (Drain.call)."""
        self.in_flight -= 1
        self._running[peer] -= 1
        if not self._running[peer]:
            del self._running[peer]
        if self.draining:
            self._ended[peer] = time.monotonic()
        if not self.in_flight:
            self.idle.set()

    def busy(self, settle: float) -> set[Address]:
        """The client connections not to close yet: those with a call running, or whose last
        call ended less than `settle` seconds ago (its status may still be on its way)."""
        since = time.monotonic() - settle
        peers = set(self._running) | {peer for peer, at in self._ended.items() if at > since}
        return {address for peer in peers if (address := peer_address(peer)) is not None}


class _Call:
    """Drain.call's context manager: a class, not a generator, for it is entered on every call."""

    __slots__ = ("_drain", "_peer")

    def __init__(self, drain: Drain, peer: str) -> None:
        self._drain = drain
        self._peer = peer

    def __enter__(self) -> None:
        self._drain.arrive(self._peer)

    def __exit__(self, *exc: object) -> None:
        self._drain.leave(self._peer)
