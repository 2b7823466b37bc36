"""What core needs from the edges, as protocols: durable storage (the Store contract), the
upstream API, someone to tell what happened (the Observer: metrics.py counts it), and what it
offers the webhook receiver. Store backends live in store/, the upstream
client in upstream/; one contract test suite (tests/contract) runs against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .model import (
    JSON,
    DispatchSpec,
    Job,
    JobEvent,
    Lease,
    Priority,
    QueueDepth,
    UpstreamAttempt,
)
from .query import JobQuery

Clock = Callable[[], float]
"""Seconds, as time.time or time.monotonic give them. A store takes one (by default the real one)
and decides with it when an outbox lease has run out; tests move a clock of their own."""

Apply = Callable[[Job, JobEvent], tuple[Job, JobEvent]]
"""Folds an event into its job: returns the job after it and the event as it is to be recorded.

The job it is given may have an empty body ({}): the request never changes after the create, so a
store need not load it, and only what an event may change (state, times, dispatch id, result,
error, last event) is kept of the job returned."""


class Store(Protocol):
    """Every method raises core.errors.StoreUnavailable when the backend cannot be reached, and
    writes nothing partial that a retry of the same call would not complete."""

    async def open(self) -> None:
        """Connect, and create what is missing (tables, streams, buckets)."""

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise StoreUnavailable unless the backend answers now (readiness)."""

    async def secret(self, name: str) -> bytes:
        """A random 32-byte key made the first time it is asked for, then the same for every
        replica and after every restart (the callback token key)."""

    # Jobs

    async def create_job(
        self, job: Job, first_event: JobEvent, *, enqueue: bool
    ) -> tuple[Job, bool]:
        """Store a new job with its first event, and put it on the outbox when `enqueue`.

        When `job.idempotency_key` is not empty and the same client already has a job under that
        key, nothing is written and that job is returned with False. Concurrent calls with the same
        (client, key) create exactly one job. Likewise for the same `job.job_id` (a retry of the
        call, or RetryJob's job, whose id is derived from the failed one's): one job, the others
        get it with False. A crash part way must leave either nothing, or a job
        that a retry of this call completes (event appended, outbox entry present) and returns.
        """

    async def create_job_taking_slot(
        self, job: Job, first_event: JobEvent, *, limit: int, window: float
    ) -> tuple[Job, bool, float]:
        """create_job(enqueue=True) and acquire_rate(limit, window) in one call: the job and
        whether it was created, as create_job returns them, and the slot as acquire_rate gives
        it (0.0: taken). The slot is taken even for a job found by its key. One transaction
        where the backend has them (SQLite: one flush to disk for both), else the two calls at
        once."""

    async def create_jobs(
        self, new: Sequence[tuple[Job, JobEvent]], *, enqueue: bool
    ) -> list[tuple[Job, bool]]:
        """create_job for each (job, first event), answered together in their order (their
        events' cursors need not follow it): one transaction
        where the backend has them (SQLite: all or nothing, one commit), else each as
        create_job (NATS: concurrent, each committed on its own). Two with the same (client,
        key) make one job, as two create_job calls in a row would."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def job_by_key(self, client: str, idempotency_key: str) -> Job | None:
        """The client's job created under `idempotency_key`, None if there is none (yet)."""

    async def list_jobs(
        self, client: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        """The client's jobs, newest first; returns the page and the next page's token ('' when
        this is the last page)."""

    async def find_jobs(
        self, query: JobQuery, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        """Every client's jobs that `query` matches, newest first, paged as list_jobs pages
        (the same tokens). For operators (the console): it may scan every job."""

    async def begin_submission(self, job_id: str) -> Job:
        """Record that the job's submission upstream begins now (`Job.submit_begun_at`), unless
        it has begun already or the job has ended; returns the job as it is after. Raises
        NotFound when the job does not exist.

        The rule that makes a cancel exact, on every replica: this write and `append_event` on
        the same job are atomic with respect to each other (the same transaction, or the same
        compare-and-set of the job), so an append's `apply` that sees `submit_begun_at` unset is
        ordered before every begin_submission of the job, and one that sees it set, after. A
        cancel's apply refuses a begun job; the outbox sends only a job this returned begun and
        not ended. So a canceled job is never sent, and a job whose submission began is never
        canceled, whichever of the two comes first by a microsecond."""

    # Outbox
    #
    # A lease is current from lease() until the first of: its ack, its retry_later, the end of
    # its visibility by the store's clock. ack and retry_later take effect only while their lease
    # is current; otherwise they do nothing, and the entry is handed out again once the visibility
    # has run out (the worker's submission is then repeated under the same idempotency key, which
    # is harmless). So a worker whose lease ran out never ends the lease of the worker after it.
    # An entry is not handed out while a lease of it is current; a backend whose server times the
    # visibility itself (NatsStore) hands the entry out again a little later than the store's
    # clock says the lease ran out (its lease grace), never sooner. An ack or retry_later may be
    # less durable than the other writes (SqliteStore does not flush it to disk on its own): lost
    # in a crash of the machine, its lease runs out and the entry is handed out again, as if its
    # worker had vanished; the worker then finds the job ended, or the entry due.

    async def lease(
        self, *, limit: int, visibility: float, client: str | None = None
    ) -> list[Lease]:
        """Up to `limit` due entries (of `client` only, when given), each leased for
        `visibility` seconds: hidden from other workers while the lease is current, handed out
        again once it has run out. `Lease.attempts` is how many times the entry was handed out
        before, whether those leases ended by retry_later or ran out (a worker that vanished may
        have submitted). One client's entries come by their job's priority (high first), then
        oldest first (by when they came due); a backend may take clients in any order when
        `client` is None (the worker asks client by client: core/fairshare.py)."""

    async def outbox_depths(self) -> dict[str, dict[Priority, QueueDepth]]:
        """The outbox's due entries (leased or not) by client and priority; a backend may count
        entries not due yet too (NatsStore counts them all), and leave out those with none.
        Read to choose whose entries to lease next and to estimate a new job's place."""

    async def ack(self, lease: Lease) -> None:
        """Done with the entry: it is never handed out again. Does nothing unless the lease is
        current (see above)."""

    async def retry_later(self, lease: Lease, delay: float) -> None:
        """End the lease, and hand the entry out again after `delay` seconds. Does nothing
        unless the lease is current (see above)."""

    # Events

    async def append_event(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        """Append an event to its job's log and update the job, atomically.

        `apply(job, event)` gives the job after the event and the event as recorded; the store then
        sets the event's cursor and record time and returns it. Returns None, writing nothing,
        when an event with the same `dedupe_key` was appended before (kept at least 72 h).
        Raises core.errors.NotFound when the job does not exist.
        """

    async def append_events(
        self, events: Sequence[tuple[JobEvent, str | None]], *, apply: Apply
    ) -> list[JobEvent | None]:
        """append_event for each (event, dedupe key), answered together in their order: one
        transaction where the backend has them (SQLite: one flush to disk for all), else each
        as append_event (at once)."""

    async def read_events(
        self, *, client: str, after: str = "", job_id: str = "", limit: int = 1000
    ) -> list[JobEvent]:
        """The client's events after the cursor `after` ('' = from the start), in cursor order,
        only those of `job_id` when given."""

    def tail(self, *, after: str) -> AsyncIterator[JobEvent]:
        """Every event of every client appended after the cursor `after` ('' = from the start),
        in cursor order, without end: events appended by other replicas included."""

    async def last_cursor(self) -> str:
        """The cursor of the newest event ('' when there is none)."""

    async def cursor_before(self, when: float) -> str:
        """The cursor to read after for every event recorded at or after `when` (seconds since
        the epoch, compared with `JobEvent.record_time`): the one before the first such event,
        or the newest when there is none yet ('' for the start)."""

    # Rate limit

    async def acquire_rate(self, *, limit: int, window: float) -> float:
        """Take one slot of a sliding-window limit shared by every replica: at most `limit`
        acquisitions in any `window` seconds. Returns 0.0 when taken, else the seconds until a
        slot frees (nothing taken)."""


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """A 2xx answer to a dispatch: its JSON body, and the attempt that got it."""

    body: JSON
    attempt: UpstreamAttempt


class Upstream(Protocol):
    """The Dispatcher REST API. Every method raises core.errors.UpstreamError on a non-2xx answer,
    no answer or a timeout, classified as retryable or not."""

    async def dispatch(
        self,
        spec: DispatchSpec,
        *,
        idempotency_key: str,
        callback_url: str | None,
        timeout: float,
        trace_context: str = "",
    ) -> UpstreamAnswer:
        """POST the spec to its path; async mode (`?async=true`, the callback URL in the body) when
        `callback_url` is given; the request continues the trace `trace_context` names (a job's,
        '' for none). Returns the 2xx answer (async: its body has `dispatchId`); an
        UpstreamError raised carries the attempt too."""

    async def validate(self, spec: DispatchSpec, *, timeout: float) -> JSON:
        """POST to the spec's path + /validate. Returns the 2xx answer's JSON body."""

    async def templates(self, *, timeout: float) -> list[JSON]:
        """GET /api/v1/templates: the account's templates."""

    async def close(self) -> None: ...


class WebhookSink(Protocol):
    """What the webhook receiver hands a verified callback to."""

    async def record_webhook(self, token: str, envelope: JSON, *, webhook_id: str) -> bool:
        """Record one webhook for the job its callback token names, durably, before returning.

        `webhook_id` is what makes two deliveries the same webhook, taken from what its signature
        covers, so that a replay under another id is the same webhook. Returns True when it was
        new, False for a duplicate (same `webhook_id`). Raises NotFound for a token that names no
        job, or an envelope whose `dispatchId` is not the job's; InvalidArgument for an envelope
        without an `event` or whose `data` no client could decode (core/eventdata.py);
        StoreUnavailable when nothing could be written.
        """


class JobTraces(Protocol):
    """Told which job's trace the work in hand concerns (tracing.py links its span to it)."""

    def concerns(self, trace_context: str) -> None:
        """The webhook being recorded is one of the job traced as `trace_context` ('' when the
        job was not traced)."""


class NoTraces:
    """JobTraces that links nothing: core's default."""

    def concerns(self, trace_context: str) -> None:
        pass


class Observer(Protocol):
    """Told what core did, for counting (metrics.py implements it at the edge). Each method is
    called on the event loop and must return at once."""

    def dispatch_accepted(self, service: str, mode: str) -> None:
        """A dispatch request became a new job (not an idempotent replay)."""

    def upstream_dispatch(self, outcome: str) -> None:
        """The outbox's dispatch call ended: 'accepted', 'retried' or 'failed'."""

    def callback_overdue(self, service: str) -> None:
        """A job failed callback_overdue: no terminal webhook came within its deadline."""

    def webhook(self, outcome: str) -> None:
        """A verified webhook was handed to the store: 'recorded' or 'duplicate'."""

    def upstream_request(self, endpoint: str, mode: str, status: int, seconds: float) -> None:
        """One request sent upstream for a job was answered (`status` 0: no answer came)."""

    def rate_waited(self, seconds: float) -> None:
        """A call waited this long for a slot of the account's rate limit (0: none)."""

    def webhook_handled(self, outcome: str, seconds: float) -> None:
        """The webhook receiver answered a request: 'recorded', 'duplicate', or its refusal
        ('unauthorized' for a bad signature, 'not_found', 'unavailable', ...)."""

    def event_streamed(self, source: str, seconds: float) -> None:
        """A live event went out on a stream, `seconds` after the store recorded it; `source`:
        'webhook' (the upstream's) or 'gateway' (one the gateway records itself)."""

    def webhook_held(self) -> None:
        """A webhook waited for a lagging stream before it was recorded (core/hub.py)."""

    def stream_ended(self, reason: str) -> None:
        """The gateway ended a stream: 'slow' (its reader fell too far behind), 'shutdown', or
        'store_unavailable'."""

    def job_ended(self, service: str, state: str) -> None:
        """A job reached its terminal event: 'succeeded', 'failed', 'callback_overdue', or
        'canceled'."""

    def job_retried(self, service: str) -> None:
        """RetryJob made a new job to send a failed one again."""

    def outbox_pending(self, job_id: str, queued_at: float, until: float) -> None:
        """The outbox holds this job unsent since `queued_at` (seconds since the epoch); if it is
        not told of it again by `until`, another replica's worker has it."""

    def outbox_settled(self, job_id: str) -> None:
        """The outbox is done sending this job (accepted, answered, failed or ended)."""


class NoObserver:
    """An Observer that counts nothing: core's default, and what unit tests use."""

    def dispatch_accepted(self, service: str, mode: str) -> None:
        pass

    def upstream_dispatch(self, outcome: str) -> None:
        pass

    def callback_overdue(self, service: str) -> None:
        pass

    def webhook(self, outcome: str) -> None:
        pass

    def upstream_request(self, endpoint: str, mode: str, status: int, seconds: float) -> None:
        pass

    def rate_waited(self, seconds: float) -> None:
        pass

    def webhook_handled(self, outcome: str, seconds: float) -> None:
        pass

    def event_streamed(self, source: str, seconds: float) -> None:
        pass

    def webhook_held(self) -> None:
        pass

    def stream_ended(self, reason: str) -> None:
        pass

    def job_ended(self, service: str, state: str) -> None:
        pass

    def job_retried(self, service: str) -> None:
        pass

    def outbox_pending(self, job_id: str, queued_at: float, until: float) -> None:
        pass

    def outbox_settled(self, job_id: str) -> None:
        pass
