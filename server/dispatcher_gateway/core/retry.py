"""How long to wait before trying the upstream again: capped exponential backoff with full
jitter, never sooner than the upstream's Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float = 1.0
    """The first retry waits up to this many seconds."""
    cap: float = 300.0
    """No single wait is longer."""
    give_up_after: float = 24 * 3600.0
    """A job still not accepted upstream this long after it was queued fails with its last error."""

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """The wait before the next try, after `attempts` failed ones (0 = the first failed)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(attempts, 32))
        jittered = random.uniform(0.0, ceiling)
        if retry_after is not None:
            return max(jittered, retry_after)
        return jittered


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The account's upstream dispatch limit, shared by every replica."""

    limit: int = 100
    window: float = 60.0

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """'100/min', '5/s', '6000/h', or '100/30s'."""
        count, sep, per = text.strip().partition("/")
        if not sep:
            raise ValueError(f"expected COUNT/PERIOD such as 100/min, got {text!r}")
        units = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
        units |= {"h": 3600.0, "hour": 3600.0}
        per = per.strip().lower()
        number = per.rstrip("abcdefghijklmnopqrstuvwxyz") or "1"
        unit = per[len(number) :] if per[: len(number)] == number else per
        if unit not in units:
            raise ValueError(f"unknown period {per!r} in {text!r}; use s, min or h")
        limit, window = int(count), float(number) * units[unit]
        if limit <= 0 or window <= 0:
            raise ValueError(f"rate must be positive, got {text!r}")
        return cls(limit, window)
