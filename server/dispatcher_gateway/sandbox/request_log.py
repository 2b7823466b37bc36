"""The request log: every dispatch request received, in the order they arrived, with the status
each was answered, and the arrivals of the last rate window (the `max_in_window` statistic and
the sandbox's own rate limit)."""

from __future__ import annotations

import collections
import time

from .records import RequestRecord


class RequestLog:
    def __init__(self, rate_window: float) -> None:
        self.rate_window = rate_window
        self.entries: list[RequestRecord] = []
        self.by_status: collections.Counter[int] = collections.Counter()
        self.max_in_window = 0
        self._arrivals: collections.deque[float] = collections.deque()

    def arrived(self, entry: RequestRecord) -> None:
        now = time.monotonic()
        self.entries.append(entry)
        self._arrivals.append(now)
        while self._arrivals and self._arrivals[0] <= now - self.rate_window:
            self._arrivals.popleft()
        self.max_in_window = max(self.max_in_window, len(self._arrivals))

    def answered(self, entry: RequestRecord, status: int) -> None:
        entry.status = status
        self.by_status[status] += 1

    def over(self, limit: int) -> float | None:
        """None while the current window holds at most `limit` arrivals (0: no limit); else
        the seconds until its oldest leaves it."""
        if limit <= 0 or len(self._arrivals) <= limit:
            return None
        return max(self._arrivals[0] + self.rate_window - time.monotonic(), 0.0)
