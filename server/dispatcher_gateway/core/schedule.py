"""When a scheduled job (`not_before`) may be asked for: not in the past beyond a small skew
between the caller's clock and the gateway's, not further ahead than the gateway's horizon, which
the store must keep a job for (config.py checks it against the retention)."""

from __future__ import annotations

from dataclasses import dataclass

from .callbacks import DAY
from .errors import FieldViolation, InvalidArgument

DEFAULT_SKEW = 5.0
"""Seconds a `not_before` may lie in the past: a caller's clock a little behind the gateway's,
or a time computed just before the call."""
DEFAULT_HORIZON = 28 * DAY
"""Seconds ahead a job may be scheduled: with the retry window after it (a day by default), it
stays within the 30 days a store keeps a job after its last write."""


@dataclass(frozen=True, slots=True)
class ScheduleRules:
    skew: float = DEFAULT_SKEW
    horizon: float = DEFAULT_HORIZON

    def check(self, not_before: float, now: float, field: str = "not_before") -> None:
        """InvalidArgument naming `field` unless `not_before` may be asked for at `now`."""
        if not_before < now - self.skew:
            raise InvalidArgument(
                [
                    FieldViolation(
                        field,
                        f"{now - not_before:.0f} s in the past (at most {self.skew:g} s of "
                        "clock skew is allowed); leave it unset to send at once",
                    )
                ]
            )
        if not_before > now + self.horizon:
            raise InvalidArgument(
                [
                    FieldViolation(
                        field,
                        f"more than the gateway's horizon ({self.horizon:g} s) ahead",
                    )
                ]
            )
