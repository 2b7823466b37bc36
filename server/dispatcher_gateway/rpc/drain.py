"""The DispatchService calls running now, and whether new ones are still let in: what a drain
(SIGTERM) waits for and refuses. The CallGuard interceptor counts every call through here, so
that no handler does its own bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from ..core.errors import ShuttingDown

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

    def start(self) -> None:
        """Refuse every call from now on; those in flight go on."""
        self.draining = True

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """One call, counted while it runs; ShuttingDown if the drain has begun."""
        if self.draining:
            raise ShuttingDown(REFUSAL)
        self.in_flight += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
