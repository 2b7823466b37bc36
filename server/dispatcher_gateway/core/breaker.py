"""A circuit breaker for the upstream: after repeated failures stop calling it for a while, then
let one probe through before resuming. Its state is reported, never a reason to refuse work: the
gateway keeps accepting and queueing while the circuit is open."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

log = logging.getLogger("dispatcher_gateway.breaker")

FAILURE_THRESHOLD = 5
"""Consecutive failed calls that open the circuit."""
OPEN_FOR = 10.0
"""Seconds the circuit stays open before a probe; doubled after each failed probe, to a cap."""
MAX_OPEN_FOR = 300.0
PROBE_WAIT = 1.0
"""Half open with the probe in flight: look again this much later."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = FAILURE_THRESHOLD,
        open_for: float = OPEN_FOR,
        max_open_for: float = MAX_OPEN_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_open_for = open_for
        self.max_open_for = max_open_for
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.open_for = open_for
        self._probing = False
        self.opened_count = 0

    def wait(self) -> float:
        """0.0 when a call may go now, else the seconds until one may. Half open, one call (the
        probe) may go at a time: see `calling`."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        if self.state is BreakerState.OPEN:
            remaining = self.opened_at + self.open_for - self.clock()
            if remaining > 0:
                return remaining
            self._set(BreakerState.HALF_OPEN)
        return PROBE_WAIT if self._probing else 0.0

    def calling(self) -> None:
        """A call allowed by `wait` is going out now (half open: it is the probe)."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        """The upstream answered (any answer that is not its own failure)."""
        self.failures = 0
        self._probing = False
        if self.state is not BreakerState.CLOSED:
            self.open_for = self.base_open_for
            self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        """No answer, a timeout, or the upstream's own failure."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            self.open_for = min(self.open_for * 2, self.max_open_for)
            self._open()
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.opened_at = self.clock()
        self.opened_count += 1
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            log.warning(
                "upstream circuit %s -> %s (%d consecutive failures%s)",
                self.state.value,
                state.value,
                self.failures,
                f"; next probe in {self.open_for:.0f} s" if state is BreakerState.OPEN else "",
            )
            self.state = state

    def describe(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.failures,
            "times_opened": self.opened_count,
        }
