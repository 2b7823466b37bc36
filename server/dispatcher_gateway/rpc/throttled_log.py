"""Log lines about what callers send, one line each and at most a few a minute per kind: a
caller sending garbage in a loop must not be able to fill the disk or drown the other lines."""

from __future__ import annotations

import logging
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

LINES_PER_MINUTE = 10
MAX_TEXT = 200
"""Characters of caller-controlled text (an exception's message, a peer) kept in a line."""


def one_line(text: object, limit: int = MAX_TEXT) -> str:
    """`text` as it may stand in a log line: no line breaks, at most `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass
class _Budget:
    tokens: float
    at: float
    held_back: int = 0


class ThrottledLog:
    """At most `per_minute` lines of each kind a minute (a token bucket); the next line let
    through says how many were held back."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_minute: int = LINES_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.clock = clock
        self._budgets: dict[str, _Budget] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log one line unless this kind used up its budget; whether it was logged. `kind` is
        one of a few fixed words, never caller input."""
        now = self.clock()
        budget = self._budgets.get(kind)
        if budget is None:
            budget = self._budgets[kind] = _Budget(float(self.per_minute), now)
        budget.tokens = min(
            float(self.per_minute), budget.tokens + (now - budget.at) * self.per_minute / 60.0
        )
        budget.at = now
        if budget.tokens < 1.0:
            budget.held_back += 1
            return False
        budget.tokens -= 1.0
        if budget.held_back:
            message += f" ({budget.held_back} similar lines held back)"
            budget.held_back = 0
        self.logger.log(level, message, *args)
        return True


def report_internal(log: ThrottledLog, method: str, exc: BaseException) -> str:
    """Log an unexpected failure of `method` under a fresh reference, with where it was raised;
    return what the caller is told instead (the reference, never the exception's text)."""
    reference = secrets.token_hex(4)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    log.log(
        logging.ERROR,
        "internal",
        "%s failed (ref %s): %s at %s: %s",
        method,
        reference,
        type(exc).__name__,
        where,
        one_line(exc),
    )
    return (
        f"internal error in the gateway (ref {reference}); it is logged, and not your "
        "request's fault"
    )
