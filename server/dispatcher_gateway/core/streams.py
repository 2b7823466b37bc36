"""Event streams: a job's events until its end (watch), and a client's events without end
(subscribe), each first from the store, then live from the hub, with no gap and no repeat.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable

from . import states
from .errors import (
    FieldViolation,
    InvalidArgument,
    ShuttingDown,
    SlowConsumer,
    StoreUnavailable,
)
from .eventdata import data_problem
from .hub import EventHub, Subscription
from .model import EventFilter, JobEvent, cursor_value
from .ports import NoObserver, Observer, Store
from .reads import JobReads
from .records import REPLAY_PAGE

log = logging.getLogger("dispatcher_gateway.core")


def parse_cursor(cursor: str) -> int:
    """A client's cursor (model.cursor_value says what one is)."""
    value = cursor_value(cursor)
    if value is None:
        raise InvalidArgument([FieldViolation("after_cursor", "not a cursor this gateway issued")])
    return value


class _Deliverable:
    """`_deliverable` of the live event last asked about, kept: the hub hands every stream the
    same event object, one stream after another, so one check serves all of them."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[JobEvent, JobEvent] | None = None

    def __call__(self, event: JobEvent) -> JobEvent:
        last = self._last
        if last is None or last[0] is not event:
            last = self._last = (event, _deliverable(event))
        return last[1]


_live_deliverable = _Deliverable()


def _deliverable(event: JobEvent) -> JobEvent:
    """The event, or a stand-in for it when no client could decode its data: a stream that
    stopped at it would stop there again on every resume."""
    problem = data_problem(event.data)
    if problem is None:
        return event
    log.error(
        "event %s (%s) of job %s cannot be streamed: its data %s; sent as %s",
        event.cursor,
        event.type,
        event.job_id,
        problem,
        states.UNDELIVERABLE,
    )
    error = f"the event's data {problem}: no client could decode it"
    return event.replace(
        type=states.UNDELIVERABLE, data={"error": error, "original_type": event.type}
    )


_ENDED = {SlowConsumer: "slow", ShuttingDown: "shutdown", StoreUnavailable: "store_unavailable"}
"""Why the hub ended a stream, as the Observer is told it."""


class EventStreams:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        reads: JobReads,
        *,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.reads = reads
        self.clock = clock
        self.observer = observer or NoObserver()

    async def watch(self, client: str, job_id: str) -> AsyncGenerator[JobEvent, None]:
        """The job's events so far, then live, ending after its terminal event."""
        await self.reads.get_job(client, job_id)
        stream = self._stream(client, "", lambda e: e.job_id == job_id, job_id=job_id)
        # aclosing: a caller that goes away must end the inner stream (and its subscription) now.
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield event
                if event.terminal:
                    return

    async def subscribe(
        self,
        client: str,
        after: str,
        wanted: EventFilter,
        *,
        live_only: bool = False,
        since: float | None = None,
    ) -> AsyncGenerator[JobEvent, None]:
        """The client's events after the cursor (or, `since` a time, every one recorded at or
        after it), then live, without end."""
        if live_only and after:
            raise InvalidArgument(
                [FieldViolation("live_only", "cannot be combined with after_cursor")]
            )
        if since is not None and (after or live_only):
            field = "after_cursor" if after else "live_only"
            raise InvalidArgument(
                [FieldViolation("start_time", f"cannot be combined with {field}")]
            )
        parse_cursor(after)
        if since is not None:
            after = await self.store.cursor_before(since)
        stream = self._stream(client, after, wanted.matches, live_only=live_only)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield event

    async def _stream(
        self,
        client: str,
        after: str,
        matches: Callable[[JobEvent], bool],
        *,
        job_id: str = "",
        live_only: bool = False,
    ) -> AsyncGenerator[JobEvent, None]:
        # Streams carry what happens to jobs; the record of each upstream request is an
        # operator's, read with the job (GetJob). Cursors skip it: they need not be contiguous.
        def shown(event: JobEvent) -> bool:
            return event.type not in states.INFORMATIONAL and matches(event)

        # Listen before reading the store: whatever is committed after this point arrives live,
        # whatever before is in the store; the overlap is skipped by cursor. No gap, no repeat.
        sub = self.hub.subscribe(client, shown)
        try:
            last = parse_cursor(after)
            if live_only:
                last = parse_cursor(await self.store.last_cursor())
            else:
                while True:
                    page = await self.store.read_events(
                        client=client,
                        after=str(last) if last else "",
                        job_id=job_id,
                        limit=REPLAY_PAGE,
                    )
                    for event in page:
                        self._drained(sub)
                        last = int(event.cursor)
                        if shown(event):
                            yield _deliverable(event)
                    if len(page) < REPLAY_PAGE:
                        break
                # What the hub delivered just before we subscribed, should the store's answer
                # have come from a replica behind the hub's (see core/hub.py).
                for event in self.hub.recent(client, last):
                    last = int(event.cursor)
                    if shown(event):
                        yield _deliverable(event)
            while True:
                try:
                    event = await sub.get()
                except (SlowConsumer, ShuttingDown, StoreUnavailable) as exc:
                    self.observer.stream_ended(_ENDED[type(exc)])
                    raise
                position = int(event.cursor)
                if position <= last:
                    continue
                last = position
                if event.record_time > 0:
                    source = "gateway" if event.type in states.OWN_EVENTS else "webhook"
                    self.observer.event_streamed(source, self.clock() - event.record_time)
                yield _live_deliverable(event)
        finally:
            self.hub.unsubscribe(sub)

    def _drained(self, sub: Subscription) -> None:
        """Raise the drain's ShuttingDown, should it have closed `sub`: a stream still reading
        the store ends then, as a live one, not after the rest of its history (which could
        outlast the drain's grace). One cut off for falling behind reads on: it resumes later
        from further on."""
        reason = sub.reason
        if isinstance(reason, ShuttingDown):
            self.observer.stream_ended(_ENDED[ShuttingDown])
            raise reason
