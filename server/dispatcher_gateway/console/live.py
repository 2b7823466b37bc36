"""What the console learns from the gateway's event hub as events are recorded (by any replica:
the hub follows the whole store): the live feed its pages listen to (server-sent events), and
the recent counts of the overview (jobs ended in the last hour, requests sent upstream in the
rate limit's window). Counted from when this process started."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable

from ..core import states
from ..core.model import JobEvent

FEED_BACKLOG = 256
"""Events a page may fall behind the feed before its stream is ended (the page reconnects)."""
ENDED_WINDOW = 3600.0
MAX_REMEMBERED = 100_000


class _Listener:
    __slots__ = ("closed", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(FEED_BACKLOG)
        self.closed = False


class LiveFeed:
    def __init__(self, *, rate_window: float, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.rate_window = rate_window
        self._listeners: set[_Listener] = set()
        self._ended: collections.deque[tuple[float, str]] = collections.deque(maxlen=MAX_REMEMBERED)
        self._attempts: collections.deque[float] = collections.deque(maxlen=MAX_REMEMBERED)
        self._closed = False

    def observe(self, event: JobEvent) -> None:
        """The hub's observer: called on the loop with every event published."""
        now = self.clock()
        if event.type == states.ATTEMPT:
            self._attempts.append(now)
        if event.terminal:
            ended = states.OVERDUE if event.data.get("code") == states.OVERDUE else event.state
            self._ended.append((now, str(ended)))
        if not self._listeners:
            return
        message = json.dumps(
            {
                "job_id": event.job_id,
                "client": event.client,
                "service": event.service.value,
                "type": event.type,
                "state": event.state.value,
                "terminal": event.terminal,
            }
        )
        for listener in tuple(self._listeners):
            try:
                listener.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(listener)

    def _drop(self, listener: _Listener) -> None:
        self._listeners.discard(listener)
        listener.closed = True
        while not listener.queue.empty():
            listener.queue.get_nowait()
        listener.queue.put_nowait(None)

    def listen(self) -> _Listener:
        listener = _Listener()
        if self._closed:
            listener.queue.put_nowait(None)
        else:
            self._listeners.add(listener)
        return listener

    def forget(self, listener: _Listener) -> None:
        self._listeners.discard(listener)

    def close(self) -> None:
        """End every page's stream (the gateway drains)."""
        self._closed = True
        for listener in tuple(self._listeners):
            self._drop(listener)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def ended_last_hour(self) -> dict[str, int]:
        horizon = self.clock() - ENDED_WINDOW
        while self._ended and self._ended[0][0] < horizon:
            self._ended.popleft()
        return dict(collections.Counter(state for _, state in self._ended))

    def upstream_requests_in_window(self) -> int:
        horizon = self.clock() - self.rate_window
        while self._attempts and self._attempts[0] < horizon:
            self._attempts.popleft()
        return len(self._attempts)
