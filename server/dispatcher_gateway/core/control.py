"""What a client (or later an operator's console) does to a job after dispatching it: cancel it
before it goes out, or send a failed one again as a new job.

Cancel. A job can be canceled until its submission upstream begins. That moment is one write in
the store, `Store.begin_submission`, made by the outbox right before the request leaves (and by a
MODE_SYNC call at the create, as its request leaves within the call). The cancel is an append
whose fold refuses a begun job, and the store orders the two writes of one job (see the Store
contract), so exactly one wins, on every replica: a canceled job is never sent, a job whose
submission began is never reported canceled.

Retry. A new job with the same request, linked both ways (`retry_of`, `retried_by`), sent under
its own id as the upstream's idempotency key: the upstream must not answer it with the failed
request's replay, and since only failures that prove the upstream did not act are retried (see
`not_acted`), a second key cannot make a second letter. The new job's id is derived from the
failed job's, so that retries racing on several replicas, or repeated after a crash part way,
make one job.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from . import logfields, states
from .errors import WrongState
from .model import Job, JobEvent, JobState, Mode, UpstreamFailure
from .ports import NoObserver, Observer, Store
from .reads import JobReads
from .records import event_of

log = logging.getLogger("dispatcher_gateway.core")

REFUSED_STATUSES = frozenset({400, 401, 403, 404, 413, 415, 417, 422, 429})
"""Answers that turned the request away before the upstream acted on it: invalid (400, 415,
422), unknown template or resource (404), too large (413), the provider's refusal of the
request (417), the gateway's credentials (401, 403), the rate limit (429). Left out: 408 and
409 (under an idempotency key, a request the upstream may be processing), any other 4xx."""
PROVIDER_ERROR_STATUSES = frozenset({502})
"""A provider's failure the upstream answered, retryable once its cause is fixed, when the answer
carried the upstream's own error body (its code, not the gateway's `http_502`): the upstream
reached its provider, which refused. A bare 502, a 500 or a 503 may be a request half done."""
NOT_SENT_CODES = frozenset({"upstream_circuit_open", "rate_limited"})
"""The gateway's own failures of a MODE_SYNC call that never sent its request (no HTTP status):
the circuit was open, or no rate slot came within the call's deadline."""


def retry_id(job_id: str) -> str:
    """The id of the job that sends `job_id` again: the same on every replica and every try."""
    return "job_" + hashlib.sha256(f"{job_id}:retry".encode()).hexdigest()[:32]


def not_acted(failure: UpstreamFailure | None) -> str:
    """'' when the failure proves the upstream did not act on the request; otherwise why it
    may have (the reason a retry is refused)."""
    if failure is None:
        return "its failure is not recorded"
    status, code = failure.http_status, failure.code
    if status in REFUSED_STATUSES:
        return ""
    if status in PROVIDER_ERROR_STATUSES:
        if code and code != f"http_{status}":
            return ""
        return f"the upstream answered {status} without its error body: it may have acted"
    if status == 0 and code in NOT_SENT_CODES:
        return ""
    if status:
        return f"the upstream answered {status} ({code}): it may have acted on the request"
    if code == states.OVERDUE:
        return "it was accepted upstream and no terminal webhook came (callback_overdue)"
    return f"no answer proves the upstream did not act ({code})"


def fold_cancel(job: Job, event: JobEvent) -> tuple[Job, JobEvent]:
    """The cancel's fold, run inside the store's atomic step: it refuses (nothing written) a job
    whose submission began or that has moved on."""
    if job.state is not JobState.QUEUED or job.submit_begun_at:
        raise WrongState(too_late(job))
    return states.apply_event(job, event)


def too_late(job: Job) -> str:
    if job.state is JobState.QUEUED:
        return f"job {job.job_id} is queued and its submission has begun: too late to cancel"
    if job.state.terminal:
        return f"job {job.job_id} has ended ({job.state.value}): too late to cancel"
    return f"job {job.job_id} is {job.state.value} (sent upstream): too late to cancel"


class JobControl:
    """Cancels a client's job, or retries it."""

    def __init__(
        self,
        store: Store,
        reads: JobReads,
        *,
        clock: Callable[[], float],
        queued: Callable[[str], None],
        observer: Observer | None = None,
    ) -> None:
        """`queued` is told of every retry job stored, with its client (the outbox's wake)."""
        self.store = store
        self.reads = reads
        self.clock = clock
        self.queued = queued
        self.observer = observer or NoObserver()

    async def cancel(self, client: str, job_id: str) -> Job:
        """End the client's job JOB_STATE_CANCELED unless its submission has begun (WrongState,
        naming its state); a canceled job is returned as it is. `client` is recorded as who
        canceled it."""
        job = await self.reads.get_job(client, job_id)
        logfields.known(job_id=job.job_id, client=client)
        if job.state is JobState.CANCELED:
            return job
        if job.state is not JobState.QUEUED or job.submit_begun_at:
            raise WrongState(too_late(job))
        event = event_of(job, states.CANCELED, {"canceled_by": client}, self.clock())
        recorded = await self.store.append_event(
            event, dedupe_key=f"{job.job_id}:canceled", apply=fold_cancel
        )
        if recorded is not None and recorded.terminal:
            log.info("job %s canceled by %s", job.job_id, client)
            self.observer.job_ended(job.service.value, JobState.CANCELED.value)
        # Read back: a cancel repeated on another replica wrote nothing (its dedupe key), and
        # returns the job all the same.
        return await self.reads.get_job(client, job_id)

    async def retry(self, client: str, job_id: str) -> Job:
        """The new job that sends the client's failed job again (WrongState unless its failure
        proves the upstream did not act); the same one for a job retried before."""
        job = await self.reads.get_job(client, job_id)
        logfields.known(job_id=job.job_id, client=client)
        if job.retried_by:
            return await self.reads.get_job(client, job.retried_by)
        if job.state is not JobState.FAILED:
            raise WrongState(
                f"job {job.job_id} is {job.state.value}: only a failed job can be retried"
            )
        reason = not_acted(job.error)
        if job.last_event not in states.OWN_EVENTS:
            reason = f"the upstream ended it with its {job.last_event!r} event: it acted"
        if not reason:
            reason = await self._earlier_request_acted(job)
        if reason:
            raise WrongState(f"job {job.job_id} cannot be retried: {reason}")
        now = self.clock()
        new = Job(
            job_id=retry_id(job.job_id),
            client=job.client,
            services=job.services,
            # Sent by the outbox: no caller waits on a call for it.
            mode=Mode.ASYNC,
            state=JobState.QUEUED,
            body=job.body,
            metadata=dict(job.metadata),
            # The key stays the failed job's: (client, key) names one job.
            idempotency_key="",
            request_hash="",
            created_at=now,
            updated_at=now,
            trace_context=job.trace_context,
            retry_of=job.job_id,
            priority=job.priority,
        )
        first = event_of(new, states.QUEUED, {"retry_of": job.job_id}, now)
        stored, created = await self.store.create_job(new, first, enqueue=True)
        if created:
            log.info("job %s retried as %s by %s", job.job_id, stored.job_id, client)
            self.observer.job_retried(new.service.value)
            self.queued(client)
        # After the create: a crash between the two leaves the new job, which a repeat of the
        # call finds under the same id and links.
        linked = event_of(job, states.RETRIED, {"retried_by": stored.job_id}, self.clock())
        await self.store.append_event(
            linked, dedupe_key=f"{job.job_id}:retried", apply=states.apply_event
        )
        return stored

    async def _earlier_request_acted(self, job: Job) -> str:
        """'' unless a request sent for the job before its last may have been acted on: the
        failure proves only that the last one was not (a 401 after a timeout, retries given up
        on a 429 after a 503), and a retry under a new key would then dispatch twice."""
        for attempt in await self.reads.attempts(job):
            failure = UpstreamFailure(attempt.error_code, "", attempt.http_status)
            why = not_acted(failure)
            if why:
                return f"its request {attempt.request_id} may have been acted on: {why}"
        return ""
