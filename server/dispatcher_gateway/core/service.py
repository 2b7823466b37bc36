"""The gateway's use cases: submit a dispatch, record a webhook, read jobs, stream events.

rpc/ and webhooks/ call this; it calls the store and the upstream through their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from ..metrics import DISPATCHES, WEBHOOKS
from . import states
from .breaker import CircuitBreaker
from .callbacks import CallbackRules
from .errors import (
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    RateLimited,
    UpstreamError,
)
from .eventdata import data_problem
from .hub import EventHub
from .model import (
    JSON,
    DispatchSpec,
    EventFilter,
    Job,
    JobEvent,
    JobState,
    Mode,
    Service,
    UpstreamAttempt,
    UpstreamFailure,
    cursor_value,
)
from .ports import Store, Upstream, UpstreamAnswer
from .rate import RateGate
from .tokens import CallbackTokens

log = logging.getLogger("dispatcher_gateway.core")
T = TypeVar("T")

UPSTREAM_TIMEOUT = 120.0
"""The upstream's own limit on a sync dispatch."""
SMALL_CALL_TIMEOUT = 30.0
"""Validate and template calls."""
REPLAY_PAGE = 500
"""Events read from the store at a time while a stream catches up."""
HTTP_TOO_MANY_REQUESTS = 429
DEADLINE_SLACK = 0.05
"""Seconds: a sync call cancelled this close to its deadline was cancelled by the deadline."""
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
EARLIEST_EVENT_TIME = -62_135_596_800.0
"""0001-01-01T00:00:00Z. From then until END_OF_EVENT_TIMES: the times RFC 3339 writes, and so
the ones every client's google.protobuf.Timestamp holds (its JSON form refuses any other, even
"0001-01-01T00:00:00+01:00", which is in year 0 in UTC)."""
END_OF_EVENT_TIMES = 253_402_300_800.0
"""10000-01-01T00:00:00Z, the first time beyond them."""
UNDELIVERABLE_MARK = "undeliverable, not kept"
MAX_HTTP_STATUS = 999
MAX_ATTEMPT_LATENCY = 86_400.0
"""Seconds: no request the gateway sends waits a day for its answer."""


def new_job_id() -> str:
    # 128 random bits as 32 hex digits, like a uuid4's hex, at a fifth of its cost.
    return f"job_{secrets.token_hex(16)}"


def parse_cursor(cursor: str) -> int:
    """A client's cursor (model.cursor_value says what one is)."""
    value = cursor_value(cursor)
    if value is None:
        raise InvalidArgument([FieldViolation("after_cursor", "not a cursor this gateway issued")])
    return value


def spec_of(job: Job) -> DispatchSpec:
    return DispatchSpec(job.services, job.mode, job.body, job.metadata, job.idempotency_key)


def _event_time(envelope: JSON, default: float) -> float:
    """When the webhook says its event happened; `default` (its arrival) when it says nothing a
    client could be sent. A time without a zone is UTC, whatever the replica's own zone."""
    stamp = envelope.get("timestamp")
    if not isinstance(stamp, str):
        return default
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return default
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    when = parsed.timestamp()
    return when if EARLIEST_EVENT_TIME <= when < END_OF_EVENT_TIMES else default


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


def deliverable_answer(body: JSON, what: str) -> JSON:
    """The upstream's answer, or in its place a small marker when no client could be sent it
    (core/eventdata.py): recorded as it came, a sync answer would be the job's result, and make
    every GetJob and ListJobs that carries the job fail, not only its event."""
    problem = data_problem(body)
    if problem is None:
        return body
    log.error("the upstream's answer (%s) %s: kept as %r", what, problem, UNDELIVERABLE_MARK)
    return {"error": f"the upstream's answer {problem}: {UNDELIVERABLE_MARK}"}


def deliverable_failure(failure: UpstreamFailure, what: str) -> UpstreamFailure:
    """The failure, its details (the upstream's error body) replaced by a small marker when no
    client could be sent them, as they are in the job's error and the event that records it."""
    problem = data_problem(failure.to_json())
    if problem is None:
        return failure
    log.error("the upstream's error body (%s) %s: kept as %r", what, problem, UNDELIVERABLE_MARK)
    details = {"error": f"the upstream's error body {problem}: {UNDELIVERABLE_MARK}"}
    return dataclasses.replace(failure, details=details)


def _dispatch_id(body: JSON) -> str:
    """The dispatch id an answer names: a string (or number), nothing else."""
    value = body.get("dispatchId")
    if not value or isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    return str(value)


class _OtherDispatch(NotFound):
    """A webhook naming a dispatch that is not its job's: one job's webhook posted to another
    job's callback URL. Answered like an unknown callback, nothing stored."""


def _from_job(job: Job, event: JobEvent) -> tuple[Job, JobEvent]:
    """`states.apply_event` for an event that knows only its job's id: the job's client,
    service and metadata (and dispatch id, if the event has none) are taken from the job.

    An event naming another dispatch than the job's is refused. A job with none yet takes the
    event's: its webhook may come before the 202 that names it."""
    if job.dispatch_id and event.dispatch_id and event.dispatch_id != job.dispatch_id:
        raise _OtherDispatch(
            f"webhook for dispatch {event.dispatch_id!r} sent to the callback of job "
            f"{job.job_id}, dispatch {job.dispatch_id!r}"
        )
    event = event.replace(
        client=job.client,
        service=job.service,
        metadata=job.metadata,
        dispatch_id=event.dispatch_id or job.dispatch_id,
    )
    return states.apply_event(job, event)


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


class Gateway:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        tokens: CallbackTokens,
        *,
        public_url: str,
        rate: RateGate,
        hub: EventHub,
        clock: Callable[[], float] = time.time,
        on_queued: Callable[[], None] = lambda: None,
        breaker: CircuitBreaker | None = None,
        callbacks: CallbackRules | None = None,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.tokens = tokens
        self.public_url = public_url.rstrip("/")
        self.rate = rate
        self.hub = hub
        self.clock = clock
        self.on_queued = on_queued
        self.breaker = breaker or CircuitBreaker()
        self.callbacks = callbacks or CallbackRules()

    def calls_back(self, job: Job) -> bool:
        """Whether the job ends by webhook (submitted async) or by the upstream's sync answer."""
        return self.callbacks.calls_back(spec_of(job))

    def callback_url(self, job_id: str) -> str:
        return f"{self.public_url}/webhooks/dispatcher/{self.tokens.token(job_id)}"

    # Dispatch

    async def submit(self, client: str, spec: DispatchSpec, *, budget: float | None) -> Job:
        """Accept a dispatch. Async: stored and queued, returned at once. Sync: sent upstream
        within `budget` seconds, the answer recorded as the job's events, the job returned. A job
        that ends by webhook (esign, postal) is sent in async mode even then: the sync answer is
        the upstream's acceptance (SUBMITTED), its end comes later by webhook.

        Every job is put on the outbox, a sync one too: should this call never record an answer
        (the process killed mid-call), the outbox takes the job over once the call's time is up
        and sends it again under the same idempotency key."""
        now = self.clock()
        job = Job(
            job_id=new_job_id(),
            client=client,
            services=spec.services,
            mode=spec.mode,
            state=JobState.QUEUED,
            body=spec.body,
            metadata=dict(spec.metadata),
            idempotency_key=spec.idempotency_key,
            # Compared only when the key is used again: without a key, not worth its ~15 us.
            request_hash=spec.fingerprint() if spec.idempotency_key else "",
            created_at=now,
            updated_at=now,
        )
        first = self._event(job, states.QUEUED, {}, now)
        create = self.store.create_job(job, first, enqueue=True)
        slot = False
        if spec.mode is Mode.SYNC and self.breaker.wait() <= 0:
            # The job and its rate slot in one group commit: one flush to disk before the
            # upstream call, not two in a row. A slot taken for a replay goes unused: the
            # gateway then sends a little under the limit, never over it.
            (stored, created), wait = await asyncio.gather(create, self.rate.take())
            slot = wait <= 0
        else:
            stored, created = await create
        if stored.request_hash != job.request_hash:
            raise IdempotencyConflict(
                f"idempotency key {spec.idempotency_key!r} was used for a different request "
                f"(job {stored.job_id})"
            )
        if not created:
            return stored
        DISPATCHES.inc(spec.service.value, spec.mode.value)
        if spec.mode is Mode.ASYNC:
            self.on_queued()
            return stored
        return await self._dispatch_sync(stored, budget, slot=slot)

    async def _dispatch_sync(self, job: Job, budget: float | None, *, slot: bool) -> Job:
        """Send a stored sync job upstream and record the answer; `slot`: a rate slot is
        already taken for it."""
        loop = asyncio.get_running_loop()
        budget = UPSTREAM_TIMEOUT if budget is None else min(budget, UPSTREAM_TIMEOUT)
        started = loop.time()
        sent = False
        try:
            self.check_breaker()
            if not slot:
                await self.rate.wait(budget)
            remaining = budget - (loop.time() - started)
            sent = True
            calls_back = self.calls_back(job)
            answer = await self.call_upstream(
                self.upstream.dispatch(
                    spec_of(job),
                    idempotency_key=job.job_id,
                    callback_url=self.callback_url(job.job_id) if calls_back else None,
                    timeout=remaining,
                )
            )
        # Each failure is recorded shielded: gRPC may cancel the call (its deadline) while the
        # record is being written, and a job left unrecorded would stay queued for ever.
        except UpstreamError as exc:
            await asyncio.shield(self._attempt_failed(job, exc))
            raise
        except RateLimited as exc:
            failure = UpstreamFailure("rate_limited", f"not sent: {exc}")
            await asyncio.shield(self.fail(job, failure))
            raise
        except BaseException:
            # gRPC cancels the call when its deadline passes or its caller goes away. Record
            # which, and what is known of the upstream's side: a request sent may have been
            # processed (a sync dispatch has no webhook to tell), one never sent was not.
            elapsed = loop.time() - started
            if elapsed >= budget - DEADLINE_SLACK:
                code, why = "deadline_exceeded", f"the caller's deadline ({budget:.3g} s) passed"
            else:
                code, why = "cancelled", f"the caller went away after {elapsed:.3g} s"
            outcome = (
                "the upstream may have processed the dispatch"
                if sent
                else "nothing was sent upstream"
            )
            failure = UpstreamFailure(code, f"{why} before the upstream answered; {outcome}")
            await asyncio.shield(self.fail(job, failure))
            raise
        # The upstream did it: that is recorded even if the caller is gone by now.
        if calls_back:
            await asyncio.shield(self.submitted(job, answer))
            # Its webhooks may have moved it on already.
            return await self.get_job(job.client, job.job_id)
        recorded = await asyncio.shield(self.completed(job, answer))
        if recorded is None:  # recorded already (by the outbox): read it back
            return await self.get_job(job.client, job.job_id)
        # Nothing but this call writes a sync job's events this early (the outbox waits out the
        # call's time), so the job after this one is what the store now holds.
        return states.apply_event(job, recorded)[0]

    def check_breaker(self) -> None:
        """Fail fast while the upstream's circuit is open."""
        wait = self.breaker.wait()
        if wait > 0:
            failure = UpstreamFailure(
                "upstream_circuit_open",
                f"the upstream failed repeatedly; the gateway tries it again in {wait:.0f} s",
            )
            raise UpstreamError(failure, retryable=True, retry_after=wait)

    async def call_upstream(self, call: Awaitable[T]) -> T:
        """Make one upstream call, telling the circuit breaker how it went."""
        self.breaker.calling()
        try:
            result = await call
        except UpstreamError as exc:
            # A refusal (4xx, 429) is an answer: the upstream is up. No answer or a 5xx is not.
            if exc.retryable and exc.failure.http_status != HTTP_TOO_MANY_REQUESTS:
                self.breaker.failure()
            else:
                self.breaker.success()
            # Callers read the failure (the status's details), and it becomes the job's error.
            exc.failure = deliverable_failure(exc.failure, "a dispatch")
            raise
        self.breaker.success()
        return result

    async def fail(self, job: Job, failure: UpstreamFailure) -> JobEvent | None:
        """Record the gateway's own terminal failure of a job (once)."""
        failure = deliverable_failure(failure, f"job {job.job_id}")
        event = self._event(job, states.FAILED, failure.to_json(), self.clock())
        return await self.store.append_event(
            event, dedupe_key=f"{job.job_id}:failed", apply=states.apply_event
        )

    async def submitted(self, job: Job, answer: UpstreamAnswer) -> JobEvent | None:
        """Record an async request's acceptance (202), and the attempt that got it (once)."""
        body = deliverable_answer(answer.body, f"job {job.job_id}, 202")
        dispatch_id = _dispatch_id(answer.body)
        event = self._event(job, states.SUBMITTED, body, self.clock(), dispatch_id=dispatch_id)
        return await self._record_answer(job, answer, event, f"{job.job_id}:submitted")

    async def completed(self, job: Job, answer: UpstreamAnswer) -> JobEvent | None:
        """Record a sync request's answer, the job's end, and the attempt that got it (once).
        Its body becomes the job's result, which GetJob and ListJobs send."""
        body = deliverable_answer(answer.body, f"job {job.job_id}")
        dispatch_id = _dispatch_id(answer.body)
        event = self._event(job, states.COMPLETED, body, self.clock(), dispatch_id=dispatch_id)
        return await self._record_answer(job, answer, event, f"{job.job_id}:sync")

    async def _record_answer(
        self, job: Job, answer: UpstreamAnswer, event: JobEvent, dedupe_key: str
    ) -> JobEvent | None:
        # Both appends at once, the attempt's first: the store can commit them together (one
        # flush to disk on the sync call's path, not two).
        _, recorded = await asyncio.gather(
            self.record_attempt(job, answer.attempt),
            self.store.append_event(event, dedupe_key=dedupe_key, apply=states.apply_event),
        )
        return recorded

    async def record_attempt(self, job: Job, attempt: UpstreamAttempt | None) -> None:
        """Record one request sent upstream for the job (once per request id)."""
        if attempt is None:
            return
        event = self._event(job, states.ATTEMPT, attempt.to_json(), attempt.time)
        await self.store.append_event(
            event, dedupe_key=f"{job.job_id}:attempt:{attempt.request_id}", apply=states.apply_event
        )

    async def _attempt_failed(self, job: Job, exc: UpstreamError) -> None:
        await self.record_attempt(job, exc.attempt)
        await self.fail(job, exc.failure)

    async def attempts(self, job: Job) -> list[UpstreamAttempt]:
        """The requests sent upstream for the job so far, oldest first.

        A record that does not read as one is left out (and logged): a webhook could once be
        recorded under this type, and one unreadable record must not make the job unreadable."""
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

    async def validate(self, spec: DispatchSpec) -> JSON:
        try:
            answer = await self.upstream.validate(spec, timeout=SMALL_CALL_TIMEOUT)
        except UpstreamError as exc:
            exc.failure = deliverable_failure(exc.failure, "a validation")
            raise
        return deliverable_answer(answer, "a validation")

    async def templates(self) -> list[JSON]:
        return await self.upstream.templates(timeout=SMALL_CALL_TIMEOUT)

    # Webhooks

    async def record_webhook(self, token: str, envelope: JSON, *, webhook_id: str) -> bool:
        job_id = self.tokens.job_id(token)
        if job_id is None:
            raise NotFound("no such callback")
        event_type = envelope.get("event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidArgument([FieldViolation("event", "a non-empty string is required")])
        if event_type in states.OWN_EVENTS:
            raise InvalidArgument(
                [FieldViolation("event", f"{event_type!r} is an event the gateway records itself")]
            )
        data = envelope.get("data")
        payload: JSON = data if isinstance(data, dict) else {"data": data}
        # Refused before the 200: once accepted, an event no client can decode could never be
        # delivered, and Dispatcher would not send it again.
        problem = data_problem(payload)
        if problem is not None:
            raise InvalidArgument([FieldViolation("data", f"{problem}: no client could decode it")])
        # One store call: the job's own fields (client, service, metadata) are placeholders here,
        # filled in by `_from_job` from the job the store reads inside the append.
        event = JobEvent(
            job_id=job_id,
            client="",
            service=Service.EMAIL,
            type=event_type,
            state=states.state_for(event_type),
            data=payload,
            metadata={},
            event_time=_event_time(envelope, self.clock()),
            dispatch_id=_dispatch_id(envelope),
        )
        try:
            stored = await self.store.append_event(
                event, dedupe_key=f"wh:{webhook_id}", apply=_from_job
            )
        except _OtherDispatch:
            raise
        except NotFound:
            raise NotFound("no such callback") from None
        WEBHOOKS.inc("recorded" if stored is not None else "duplicate")
        return stored is not None

    # Reading

    async def get_job(self, client: str, job_id: str) -> Job:
        job = await self.store.get_job(job_id) if job_id else None
        if job is None or job.client != client:
            raise NotFound(f"job {job_id!r} not found")
        return job

    async def list_jobs(
        self, client: str, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        if page_size < 0:
            raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            return await self.store.list_jobs(client, limit=size, page_token=page_token)
        # What a store's decoder raised on a token it never issued (OverflowError: a time no
        # float holds): its text is not for callers.
        except (ValueError, RecursionError, OverflowError) as exc:
            raise InvalidArgument(
                [FieldViolation("page_token", "is not a token this server issued")]
            ) from exc

    # Streams

    async def watch(self, client: str, job_id: str) -> AsyncGenerator[JobEvent, None]:
        """The job's events so far, then live, ending after its terminal event."""
        await self.get_job(client, job_id)
        stream = self._stream(client, "", lambda e: e.job_id == job_id, job_id=job_id)
        # aclosing: a caller that goes away must end the inner stream (and its subscription) now.
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                yield event
                if event.terminal:
                    return

    async def subscribe(
        self, client: str, after: str, wanted: EventFilter, *, live_only: bool = False
    ) -> AsyncGenerator[JobEvent, None]:
        """The client's events after the cursor, then live, without end."""
        if live_only and after:
            raise InvalidArgument(
                [FieldViolation("live_only", "cannot be combined with after_cursor")]
            )
        parse_cursor(after)
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
                event = await sub.get()
                position = int(event.cursor)
                if position <= last:
                    continue
                last = position
                yield _deliverable(event)
        finally:
            self.hub.unsubscribe(sub)

    def _event(
        self, job: Job, event_type: str, data: JSON, when: float, *, dispatch_id: str = ""
    ) -> JobEvent:
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
