"""Taking a dispatch request: the job stored and queued in one write, then, for a sync request,
sent upstream within the caller's time and the answer recorded as the job's events.

Every job is put on the outbox, a sync one too: should its call never record an answer (the
process killed mid-call), the outbox (core/outbox.py) takes the job over once the call's time is
up and sends it again under the same idempotency key.

A sync call waits for two flushes to disk (a store flushes every write but an outbox entry's ack
or retry: core/ports.py), and neither can go. The job, before the upstream call: lost in a crash
of the machine after the upstream acted, the job would be gone, and the caller's retry a second
dispatch under a new key. Its result, before the answer: lost, the outbox would send the job
again under the same key, and the upstream documents only that a repeated key is not a second
dispatch, not that it is answered with the first answer (docs/upstream.md): the job could end
otherwise than its caller was told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence

from . import logfields, states
from .callbacks import CallbackRules
from .caller import UPSTREAM_TIMEOUT, UpstreamCaller, spec_of
from .errors import (
    FieldViolation,
    GatewayError,
    IdempotencyConflict,
    InvalidArgument,
    RateLimited,
    UpstreamError,
)
from .fairshare import QueueEstimates
from .model import (
    JSON,
    DispatchSpec,
    Job,
    JobEvent,
    JobState,
    Mode,
    QueueEstimate,
    UpstreamFailure,
)
from .ports import NoObserver, Observer, Store, UpstreamAnswer
from .reads import JobReads
from .records import JobRecords, event_of
from .schedule import ScheduleRules

DEADLINE_SLACK = 0.05
"""Seconds: a sync call cancelled this close to its deadline was cancelled by the deadline."""


def new_job_id() -> str:
    """32 hex digits: the milliseconds since the epoch (48 bits), then 80 random bits. In the
    order of creation, so that the jobs of one group commit share the index pages they write
    (SQLite's job_id key, events_by_job) instead of each dirtying a page of its own."""
    return f"job_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


class Dispatches:
    """Submits dispatches (and validations, and the template list) for clients."""

    def __init__(
        self,
        store: Store,
        caller: UpstreamCaller,
        records: JobRecords,
        reads: JobReads,
        *,
        callbacks: CallbackRules,
        clock: Callable[[], float],
        queued: Callable[[str], None],
        estimates: QueueEstimates,
        observer: Observer | None = None,
        schedule: ScheduleRules | None = None,
    ) -> None:
        """`queued` is told of every async job stored, with its client (the outbox's wake);
        `schedule`: when a job's `not_before` may be."""
        self.store = store
        self.caller = caller
        self.records = records
        self.reads = reads
        self.callbacks = callbacks
        self.clock = clock
        self.queued = queued
        self.estimates = estimates
        self.observer = observer or NoObserver()
        self.schedule = schedule or ScheduleRules()
        self._closing = False

    def close(self) -> None:
        """The gateway is shutting down: a sync call cancelled from now on was cut by it (the end
        of its drain), not given up by its caller. Its job is left to the outbox, which sends it
        again under the same key once the call's time is up, rather than failed."""
        self._closing = True

    async def submit(
        self, client: str, spec: DispatchSpec, *, budget: float | None, trace_context: str = ""
    ) -> Job:
        """`submit_estimated` without the estimate."""
        job, _ = await self.submit_estimated(
            client, spec, budget=budget, trace_context=trace_context
        )
        return job

    async def submit_estimated(
        self, client: str, spec: DispatchSpec, *, budget: float | None, trace_context: str = ""
    ) -> tuple[Job, QueueEstimate | None]:
        """Accept a dispatch. Async: stored and queued, returned at once with where it stands
        (core/fairshare.py; the "queued" event carries it too). Sync: sent upstream within
        `budget` seconds, the answer recorded as the job's events, the job returned. A job that
        ends by webhook (esign, postal) is sent in async mode even then: the sync answer is the
        upstream's acceptance (SUBMITTED), its end comes later by webhook. `trace_context`: the
        caller's trace, kept with the job. The estimate is None for a sync job, and for a job
        the idempotency key found."""
        # The caller's deadline runs from its call's arrival, store writes included.
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        budget = UPSTREAM_TIMEOUT if budget is None else min(budget, UPSTREAM_TIMEOUT)
        now = self.clock()
        try:
            job = self._new_job(client, spec, now, trace_context)
        except InvalidArgument:
            # A scheduled call retried past its time: the job it made, if it made one.
            if (made := await self._made_by_key(client, spec)) is None:
                raise
            return made, None
        logfields.known(job_id=job.job_id, client=client)
        estimate = self._estimate(job)
        first = event_of(job, states.QUEUED, _queued_data(estimate), now)
        slot = False
        if spec.mode is Mode.SYNC and self.caller.paused() <= 0:
            # The job and its rate slot in one write: one flush to disk before the upstream
            # call, not two in a row. A slot taken for a replay goes unused: the gateway then
            # sends a little under the limit, never over it.
            stored, created, wait = await self.caller.create_taking_slot(job, first)
            slot = wait <= 0
        else:
            stored, created = await self.store.create_job(job, first, enqueue=True)
        _check_same_request(stored, job)
        if not created:
            return stored, None
        self.observer.dispatch_accepted(spec.service.value, spec.mode.value)
        if spec.mode is Mode.ASYNC:
            self.queued(client)
            return stored, estimate
        return await self._dispatch_sync(stored, arrived, budget, slot=slot), None

    async def submit_batch(
        self, client: str, specs: Sequence[DispatchSpec], *, trace_context: str = ""
    ) -> list[tuple[Job | GatewayError, QueueEstimate | None]]:
        """Accept async dispatches together, each as `submit_estimated` would alone: its job
        (created, or found by its idempotency key) or its own error, with its estimate, in
        order. The jobs are stored in one call (Store.create_jobs: one commit where the store
        has transactions)."""
        now = self.clock()
        results: list[Job | GatewayError] = []
        estimates: dict[str, QueueEstimate | None] = {}
        new: list[tuple[int, Job]] = []
        for spec in specs:
            try:
                if spec.mode is not Mode.ASYNC:
                    raise InvalidArgument([FieldViolation("mode", "MODE_ASYNC only in a batch")])
                job = self._new_job(client, spec, now, trace_context)
            except InvalidArgument as exc:
                found: Job | GatewayError | None
                try:
                    found = await self._made_by_key(client, spec)
                except IdempotencyConflict as conflict:
                    found = conflict
                results.append(exc if found is None else found)
                continue
            new.append((len(results), job))
            results.append(job)
        if not new:
            return [(result, None) for result in results]
        for _, job in new:
            estimates[job.job_id] = self._estimate(job)
        stored = await self.store.create_jobs(
            [
                (job, event_of(job, states.QUEUED, _queued_data(estimates[job.job_id]), now))
                for _, job in new
            ],
            enqueue=True,
        )
        for (i, job), (found, created) in zip(new, stored, strict=True):
            try:
                _check_same_request(found, job)
            except IdempotencyConflict as exc:
                results[i] = exc
                continue
            results[i] = found
            if created:
                self.observer.dispatch_accepted(job.service.value, job.mode.value)
        self.queued(client)
        return [(r, estimates.get(r.job_id) if isinstance(r, Job) else None) for r in results]

    def _estimate(self, job: Job) -> QueueEstimate | None:
        """Where a new async job will stand; not sent before its not_before."""
        if job.mode is not Mode.ASYNC:
            return None
        estimate = self.estimates.before_queueing(job.client, job.priority)
        if job.not_before > estimate.expected_submit_time:
            return dataclasses.replace(estimate, expected_submit_time=job.not_before)
        return estimate

    async def _made_by_key(self, client: str, spec: DispatchSpec) -> Job | None:
        """The job an earlier call with this request's idempotency key made, for a request
        refused as new (a `not_before` now past, as a scheduled call retried after its time
        is): that call's answer is due, not the refusal. IdempotencyConflict if the key made a
        job of another request."""
        if not spec.idempotency_key:
            return None
        made = await self.store.job_by_key(client, spec.idempotency_key)
        if made is not None and made.request_hash != spec.fingerprint():
            raise _conflict(spec.idempotency_key, made)
        return made

    def _new_job(self, client: str, spec: DispatchSpec, now: float, trace_context: str) -> Job:
        """The job a request makes; InvalidArgument if its time (not_before) cannot be."""
        if spec.not_before:
            self.schedule.check(spec.not_before, now)
        return Job(
            job_id=new_job_id(),
            client=client,
            services=spec.services,
            mode=spec.mode,
            state=JobState.QUEUED,
            body=spec.body,
            metadata=dict(spec.metadata),
            idempotency_key=spec.idempotency_key,
            # Compared only when the key is used again: without a key, not worth computing.
            request_hash=spec.fingerprint() if spec.idempotency_key else "",
            created_at=now,
            updated_at=now,
            trace_context=trace_context,
            not_before=spec.not_before,
            priority=spec.priority,
            # A sync job is sent within its call: too late to cancel from the start.
            submit_begun_at=now if spec.mode is Mode.SYNC else 0.0,
        )

    async def _dispatch_sync(self, job: Job, arrived: float, budget: float, *, slot: bool) -> Job:
        """Send a stored sync job upstream and record the answer, within `budget` seconds of
        the call's arrival (`arrived`, by the loop's clock); `slot`: a rate slot is already
        taken for it."""
        loop = asyncio.get_running_loop()
        deadline = arrived + budget
        sent = False
        calls_back = self.callbacks.calls_back(spec_of(job))
        try:
            self.caller.check_breaker()
            if not slot:
                await self.caller.wait_slot(deadline - loop.time())
            remaining = deadline - loop.time()
            sent = True
            answer = await self.caller.dispatch(job, calls_back=calls_back, timeout=remaining)
        # Each failure is recorded shielded: gRPC may cancel the call (its deadline) while the
        # record is being written, and a job left unrecorded would stay queued for ever.
        except UpstreamError as exc:
            if calls_back and exc.timeout and exc.attempt is not None:
                # Sent, no answer: the upstream may have accepted it, and then its webhooks
                # will end it. Not failed: ended by them, or sent again under the same key by
                # the outbox once the call's time is up (SYNC_CALL_GRACE).
                await asyncio.shield(self.records.attempt(job, exc.attempt))
                raise
            await asyncio.shield(self._attempt_failed(job, exc))
            raise
        except RateLimited as exc:
            failure = UpstreamFailure("rate_limited", f"not sent: {exc}")
            await asyncio.shield(self.records.fail(job, failure))
            raise
        except BaseException:
            if self._closing or (sent and calls_back):
                # As a timeout above: its webhooks, or the outbox, end it.
                raise
            # gRPC cancels the call when its deadline passes or its caller goes away. Record
            # which, and what is known of the upstream's side: a request sent may have been
            # processed (a sync dispatch has no webhook to tell), one never sent was not.
            elapsed = loop.time() - arrived
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
            await asyncio.shield(self.records.fail(job, failure))
            raise
        # The upstream did it: that is recorded even if the caller is gone by now.
        if calls_back:
            await asyncio.shield(self.records.submitted(job, answer))
            # Its webhooks may have moved it on already.
            return await self.reads.get_job(job.client, job.job_id)
        recorded = await self._completed(job, answer)
        if recorded is None:  # recorded already (by the outbox): read it back
            return await self.reads.get_job(job.client, job.job_id)
        # Nothing but this call writes a sync job's events this early (the outbox waits out the
        # call's time), so the job after this one is what the store now holds.
        return states.apply_event(job, recorded)[0]

    async def _completed(self, job: Job, answer: UpstreamAnswer) -> JobEvent | None:
        """records.completed, carried through though gRPC cancels the call meanwhile, and not
        under asyncio.shield: its task of its own would cost every sync call three more turns of
        the loop, in which other work (the event hub's) goes first. Cancelled, the record is
        written again, shielded: its dedupe keys keep one that had landed from being written
        twice, and such a record ended the job by this call (nothing else records a sync job's
        answer within its call's time), which the observer is then told, as records tells it."""
        try:
            return await self.records.completed(job, answer)
        except asyncio.CancelledError:
            if await asyncio.shield(self.records.completed(job, answer)) is None:
                ended = states.state_for(states.COMPLETED)
                self.observer.job_ended(job.service.value, ended.value)
            raise

    async def _attempt_failed(self, job: Job, exc: UpstreamError) -> None:
        await self.records.attempt(job, exc.attempt)
        await self.records.fail(job, exc.failure)

    async def validate(self, spec: DispatchSpec) -> JSON:
        return await self.caller.validate(spec)

    async def templates(self) -> list[JSON]:
        return await self.caller.templates()


def _check_same_request(stored: Job, job: Job) -> None:
    """IdempotencyConflict unless the job found under the key is of the same request."""
    if stored.request_hash != job.request_hash:
        raise _conflict(job.idempotency_key, stored)


def _conflict(key: str, stored: Job) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"idempotency key {key!r} was used for a different request (job {stored.job_id})"
    )


def _queued_data(estimate: QueueEstimate | None) -> JSON:
    """The "queued" event's data: where the job stands, when it is estimated."""
    return {"estimate": estimate.to_json()} if estimate is not None else {}
