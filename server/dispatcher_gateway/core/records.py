"""A job's record: the events the gateway writes of a job itself (each request sent upstream,
the upstream's acceptance or answer, the gateway's own failure of the job), each once, and the
job's events read back.

Every write carries a dedupe key, so that the sync call and the outbox, or two replicas, that
record the same outcome record it once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable

from . import states
from .eventdata import deliverable_answer, deliverable_failure, has_utf8_form
from .model import JSON, Job, JobEvent, UpstreamAttempt, UpstreamFailure
from .ports import NoObserver, Observer, Store, UpstreamAnswer

log = logging.getLogger("dispatcher_gateway.core")

REPLAY_PAGE = 500
"""Events read from the store at a time when a job's or a stream's events are read back."""
EARLIEST_EVENT_TIME = -62_135_596_800.0
"""0001-01-01T00:00:00Z. From then until END_OF_EVENT_TIMES: the times RFC 3339 writes, and so
the ones every client's google.protobuf.Timestamp holds (its JSON form refuses any other, even
"0001-01-01T00:00:00+01:00", which is in year 0 in UTC)."""
END_OF_EVENT_TIMES = 253_402_300_800.0
"""10000-01-01T00:00:00Z, the first time beyond them."""
MAX_HTTP_STATUS = 999
"""The largest number an HTTP status line can carry (three digits)."""
MAX_ATTEMPT_LATENCY = 86_400.0
"""Seconds: no request the gateway sends waits a day for its answer."""


def dispatch_id_of(body: JSON) -> str:
    """The dispatch id an answer or a webhook names: a string (or number) a client can be sent,
    nothing else."""
    value = body.get("dispatchId")
    if not value or isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    if isinstance(value, str) and not has_utf8_form(value):
        return ""
    return str(value)


def _attempt_from(data: JSON) -> UpstreamAttempt | None:
    """The attempt an event's data records, if it is one a client can be sent."""
    try:
        attempt = UpstreamAttempt.from_json(data)
    except (TypeError, ValueError, OverflowError):
        return None
    sane = (
        EARLIEST_EVENT_TIME <= attempt.time < END_OF_EVENT_TIMES
        and 0 <= attempt.http_status <= MAX_HTTP_STATUS
        and 0 <= attempt.latency <= MAX_ATTEMPT_LATENCY
    )
    return attempt if sane else None


def event_of(
    job: Job, event_type: str, data: JSON, when: float, *, dispatch_id: str = ""
) -> JobEvent:
    """A new event of the job, carrying its client, service and metadata."""
    return JobEvent(
        job_id=job.job_id,
        client=job.client,
        service=job.service,
        type=event_type,
        state=states.state_for(event_type),
        data=data,
        metadata=job.metadata,
        event_time=when,
        dispatch_id=dispatch_id or job.dispatch_id,
    )


class JobRecords:
    """Writes the gateway's own events of a job, and reads a job's events back."""

    def __init__(
        self, store: Store, clock: Callable[[], float], *, observer: Observer | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.observer = observer or NoObserver()

    async def fail(self, job: Job, failure: UpstreamFailure) -> JobEvent | None:
        """Record the gateway's own terminal failure of a job (once)."""
        failure = deliverable_failure(failure, f"job {job.job_id}")
        event = event_of(job, states.FAILED, failure.to_json(), self.clock())
        recorded = await self.store.append_event(
            event, dedupe_key=f"{job.job_id}:failed", apply=states.apply_event
        )
        if recorded is not None and recorded.terminal:
            overdue = failure.code == states.OVERDUE
            self.observer.job_ended(
                job.service.value, states.OVERDUE if overdue else recorded.state.value
            )
        return recorded

    async def submitted(self, job: Job, answer: UpstreamAnswer) -> JobEvent | None:
        """Record an async request's acceptance, and the attempt that got it (once)."""
        body = deliverable_answer(answer.body, f"job {job.job_id}, acceptance")
        dispatch_id = dispatch_id_of(answer.body)
        event = event_of(job, states.SUBMITTED, body, self.clock(), dispatch_id=dispatch_id)
        return await self._record_answer(job, answer, event, f"{job.job_id}:submitted")

    async def completed(self, job: Job, answer: UpstreamAnswer) -> JobEvent | None:
        """Record a sync request's answer, the job's end, and the attempt that got it (once).
        Its body becomes the job's result, which GetJob and ListJobs send."""
        body = deliverable_answer(answer.body, f"job {job.job_id}")
        dispatch_id = dispatch_id_of(answer.body)
        event = event_of(job, states.COMPLETED, body, self.clock(), dispatch_id=dispatch_id)
        return await self._record_answer(job, answer, event, f"{job.job_id}:sync")

    async def _record_answer(
        self, job: Job, answer: UpstreamAnswer, event: JobEvent, dedupe_key: str
    ) -> JobEvent | None:
        # Both appends in one write, the attempt's first: one flush to disk on the sync call's
        # path, not two.
        appends = [(event, dedupe_key)]
        if answer.attempt is not None:  # as `attempt` takes it
            appends.insert(0, self._attempt_event(job, answer.attempt))
        recorded = (await self.store.append_events(appends, apply=states.apply_event))[-1]
        if recorded is not None and recorded.terminal:
            self.observer.job_ended(job.service.value, recorded.state.value)
        return recorded

    async def attempt(self, job: Job, attempt: UpstreamAttempt | None) -> None:
        """Record one request sent upstream for the job (once per request id)."""
        if attempt is None:
            return
        event, dedupe_key = self._attempt_event(job, attempt)
        await self.store.append_event(event, dedupe_key=dedupe_key, apply=states.apply_event)

    @staticmethod
    def _attempt_event(job: Job, attempt: UpstreamAttempt) -> tuple[JobEvent, str]:
        """The event that records a request sent upstream, and its dedupe key (one per request
        id)."""
        event = event_of(job, states.ATTEMPT, attempt.to_json(), attempt.time)
        return event, f"{job.job_id}:attempt:{attempt.request_id}"

    async def events_of(self, job: Job) -> AsyncGenerator[JobEvent, None]:
        """The job's events recorded so far, oldest first."""
        after = ""
        while True:
            page = await self.store.read_events(
                client=job.client, after=after, job_id=job.job_id, limit=REPLAY_PAGE
            )
            for event in page:
                yield event
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].cursor

    async def attempts(self, job: Job) -> list[UpstreamAttempt]:
        """The requests sent upstream for the job so far, oldest first.

        A record that does not read as one is left out (and logged): a store may hold a webhook
        recorded under this type by an older gateway, and one unreadable record must not make
        the job unreadable."""
        found = []
        async for event in self.events_of(job):
            if event.type != states.ATTEMPT:
                continue
            attempt = _attempt_from(event.data)
            if attempt is None:
                log.warning(
                    "job %s: event %s is not an upstream attempt the gateway recorded; left out",
                    job.job_id,
                    event.cursor,
                )
                continue
            found.append(attempt)
        return found
