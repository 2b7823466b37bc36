"""The outbox worker: takes every job to its end.

A queued job is sent upstream within the account's rate limit, each client's jobs in their share
of it (core/fairshare.py: by weight across clients, by priority then in order within one),
retrying what is safe to retry; every request for a job carries the same idempotency key (the job
id), so a retry after a lost answer or a crash never dispatches twice. How it is sent depends on
how the job can end (core/callbacks.py): a job the upstream calls back is sent in async mode and
its entry then waits for the job's deadline, when a job still without its terminal webhook fails
`callback_overdue`; any other job is sent in sync mode, in the background, and the answer is its
end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable

from . import logfields, states
from .callbacks import CallbackRules
from .caller import UPSTREAM_TIMEOUT, UpstreamCaller, spec_of
from .errors import StoreUnavailable, UpstreamError
from .fairshare import FairShare, Weights, equal_weights
from .model import Job, JobState, Lease, Mode, UpstreamFailure
from .ports import NoObserver, Observer, Store
from .records import JobRecords
from .retry import RetryPolicy

log = logging.getLogger("dispatcher_gateway.outbox")

LEASE_MARGIN = 30.0
"""Added to the longest a lease can legitimately be held (a rate window, then the longest call)
to get its visibility: a worker that died holding entries gives them back then."""
SUBMIT_TIMEOUT = 30.0
"""Seconds an async submission waits for its acceptance: the upstream documents it as answered
in well under a second, so past this it is tried again later."""
SYNC_CONCURRENCY = 100
"""Background sync calls awaiting the upstream at once. A sync answer can take tens of seconds,
so at the account's default rate (100 a minute) dozens are in flight at once: these many keep
the rate with no call waiting for another."""
ASYNC_CONCURRENCY = 32
"""Async submissions awaiting the upstream's acceptance at once."""
LEASE_BATCH = 50
LEASE_AHEAD = 0.5
"""Seconds of the account's rate a worker leases at once: what it holds is sent in the order
chosen when it was leased, so a client that starts queueing waits at most this long (per
replica) behind entries leased before it, not a whole batch of another client's."""
CLIENTS_FRESHNESS = 1.0
"""Seconds the clients with entries, as last read, are used for while some are known (those
queueing through this replica are added as they queue): a client queueing through another
replica is seen within this."""
IDLE_POLL = 1.0
"""Seconds between looks at an idle outbox (for other replicas' jobs and retries come due)."""
MISSING_JOB_TRIES = 10
MISSING_JOB_DELAY = 1.0
"""An entry whose job is not in the store is put back this many times, this many seconds apart,
before it is dropped. No store today queues an entry before its job. This is the first of two
releases: the NATS store is to publish a job's entry before it commits the job, so that a job once
committed is sent though its create died right after. Its job may then still be landing when
another replica leases the entry, and every replica must put it back, not drop it, before any
replica publishes first (a rolling upgrade runs both releases)."""
PAUSED_POLL = 1.0
"""Seconds the worker leases nothing once it found the upstream's circuit open (less if the
circuit lets a call through sooner): otherwise every due entry, a whole backlog in an outage,
would be leased one after the other only to be put back for the pause. An entry that waits only
for its callback deadline or to be dropped is settled this much later at most."""
BUSY_DELAY = 1.0
"""Seconds an entry waits when every call of its kind is taken."""
STORE_RETRY = 1.0
"""Seconds before the worker tries again a store that failed it part way through a batch."""
DUE_MARGIN = 0.005
"""Seconds added to a retry's delay before looking for it: the store's clock is not the loop's."""
SYNC_CALL_GRACE = UPSTREAM_TIMEOUT + LEASE_MARGIN
"""Seconds after its creation a sync job is its caller's to send; then the outbox's."""
SLOT_FRESHNESS = 0.5
"""Seconds a rate slot may wait before its request leaves: past this (a stalled process), a new
slot is taken, so requests bunched by a stall cannot exceed the limit where the upstream counts."""


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        caller: UpstreamCaller,
        records: JobRecords,
        policy: RetryPolicy,
        *,
        callbacks: CallbackRules,
        clock: Callable[[], float],
        observer: Observer | None = None,
        submit_timeout: float = SUBMIT_TIMEOUT,
        sync_timeout: float = UPSTREAM_TIMEOUT,
        sync_concurrency: int = SYNC_CONCURRENCY,
        async_concurrency: int = ASYNC_CONCURRENCY,
        weights: Weights = equal_weights,
    ) -> None:
        """`weights`: each client's weight in the share of the rate (core/fairshare.py)."""
        self.store = store
        self.caller = caller
        self.records = records
        self.policy = policy
        self.callbacks = callbacks
        self.clock = clock
        self.observer = observer or NoObserver()
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._stranded: collections.deque[Lease] = collections.deque()
        """Leases an outage kept the worker from finishing, handed back when the store answers."""
        self._free = {Mode.ASYNC: async_concurrency, Mode.SYNC: sync_concurrency}
        """Calls of each kind that may start now: a slow sync answer never holds up an
        acceptance."""
        self._slot_freed = asyncio.Event()
        self._closed = asyncio.Event()
        self._hold_until = -math.inf
        """Loop time until which nothing is leased: the circuit was found open (PAUSED_POLL)."""
        self.submit_timeout = submit_timeout
        self.sync_timeout = sync_timeout
        rate = caller.rate_limit
        # Leasing no more than the rate admits in LEASE_AHEAD bounds how long a lease waits,
        # and how long a client's new jobs queue behind what was leased before them.
        ahead = math.ceil(rate.limit * LEASE_AHEAD / rate.window)
        self._batch = max(1, min(LEASE_BATCH, rate.limit, ahead))
        self._fair = FairShare(weights)
        self._clients: set[str] = set()
        self._clients_read = -math.inf
        self.visibility = rate.window + max(submit_timeout, sync_timeout) + LEASE_MARGIN

    def wake(self, client: str | None = None) -> None:
        """Something was queued, by `client` when known: look now rather than at the next poll,
        with `client` among those with jobs waiting (a client that starts queueing gets its
        share from its first job). Unknown, who has jobs waiting is read again."""
        # Told the client, no read: every Dispatch wakes the worker, and a read costs a scan
        # of the due entries on SQLite, which a backlog makes longer.
        if client is None:
            self._clients_read = -math.inf
        else:
            self._clients.add(client)
        self._wakeup.set()

    def close(self) -> None:
        """Lease nothing more: `run` returns (once its submissions in flight end, or
        `submit_timeout` later) without being cancelled, which an awaited answer arriving at the
        same moment can swallow (asyncio.wait_for in Python 3.11)."""
        self._closed.set()
        self._wakeup.set()
        self._slot_freed.set()

    async def run(self) -> None:
        try:
            while not self._closed.is_set():
                room = sum(self._free.values())
                if room <= 0:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                hold = min(
                    self._hold_until - asyncio.get_running_loop().time(), self.caller.paused()
                )
                if hold > 0:
                    # Not woken by what is queued meanwhile: it would only be put back.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), hold)
                    continue
                leases = await self._lease(min(self._batch, room))
                if not leases:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL)
                    continue
                for i, lease in enumerate(leases):
                    try:
                        await self._start(lease)
                    except StoreUnavailable as exc:
                        # The store went away mid-batch: whatever is left goes back once it
                        # answers again, not a whole visibility later.
                        log.warning("outbox: store unavailable (%s); retrying", exc)
                        self._stranded.extend(leases[i:])
                        # Not at once: the store may answer the hand-back and the lease and
                        # fail this call again, and the worker would go round without pause.
                        await asyncio.sleep(STORE_RETRY)
                        break
        finally:
            await self.stop()

    async def _lease(self, limit: int) -> list[Lease]:
        """Hand back what an outage stranded, then lease; nothing while the store is away."""
        try:
            while self._stranded:
                await self.store.retry_later(self._stranded[0], 0.0)
                self._stranded.popleft()
            return await self._lease_fairly(limit)
        except StoreUnavailable as exc:
            log.warning("outbox: store unavailable (%s); retrying", exc)
            return []

    async def _lease_fairly(self, limit: int) -> list[Lease]:
        """Up to `limit` due entries, in the order of the clients' shares: each client with
        entries is asked for as many as its share of `limit`, and what one lacks goes to the
        others (work-conserving). A client is charged for an entry once it is sent (`_start`)."""
        clients = await self._waiting_clients()
        leases: list[Lease] = []
        while clients and len(leases) < limit:
            plan = self._fair.plan(clients, limit - len(leases))
            wanted = collections.Counter(plan)
            found = await asyncio.gather(
                *(
                    self.store.lease(limit=count, visibility=self.visibility, client=client)
                    for client, count in wanted.items()
                )
            )
            got = {
                client: collections.deque(batch)
                for client, batch in zip(wanted, found, strict=True)
            }
            for client in plan:
                if got[client]:
                    leases.append(got[client].popleft())
            # A client that had fewer than asked has none due now.
            clients -= {c for c, batch in zip(wanted, found, strict=True) if len(batch) < wanted[c]}
        return leases

    async def _waiting_clients(self) -> set[str]:
        """The clients with entries on the outbox, read again when none were known or the last
        reading is CLIENTS_FRESHNESS old (a read costs a scan of the due entries on SQLite)."""
        now = asyncio.get_running_loop().time()
        if not self._clients or now - self._clients_read > CLIENTS_FRESHNESS:
            depths = await self.store.outbox_depths()
            self._clients = {c for c, by_priority in depths.items() if by_priority}
            self._clients_read = now
        return set(self._clients)

    async def _start(self, lease: Lease) -> None:
        """Settle one entry: send its job upstream as a task of its own, wait out its caller or
        its deadline, or drop it when the job has ended."""
        job = await self.store.get_job(lease.job_id)
        if job is None and lease.attempts < MISSING_JOB_TRIES:
            # Its create may still be landing (MISSING_JOB_TRIES): put back, not dropped.
            await self.store.retry_later(lease, MISSING_JOB_DELAY)
            return
        if job is None or job.state.terminal:
            self.observer.outbox_settled(lease.job_id)
            await self.store.ack(lease)
            return
        if job.state is not JobState.QUEUED:
            # Accepted upstream in async mode (its webhook may even have come first): the
            # entry now stands for the job's deadline.
            self.observer.outbox_settled(lease.job_id)
            await self._await_callback(lease, job)
            return
        now = self.clock()
        if job.not_before > now:
            # Scheduled: the entry waits in the outbox for its time, as a retry waits out its
            # backoff (one lease, then nothing until it is due, after a restart too).
            await self._retry_later(lease, job.not_before - now, job)
            return
        if job.mode is Mode.SYNC and now < job.created_at + SYNC_CALL_GRACE:
            # Its caller is sending it now; the entry is the safety net should the call be lost.
            await self._retry_later(lease, job.created_at + SYNC_CALL_GRACE - now, job)
            return
        # Unsent while this worker holds it: until its lease would run out, or its retry is due.
        self.observer.outbox_pending(job.job_id, _queued_at(job), now + self.visibility)
        paused = self.caller.paused()
        if paused > 0:
            # The circuit is open: the entry waits in the outbox, not in memory, and the worker
            # leases nothing more for a while (PAUSED_POLL).
            loop_now = asyncio.get_running_loop().time()
            self._hold_until = loop_now + min(paused, PAUSED_POLL)
            await self._retry_later(lease, paused, job, unsent=True)
            return
        kind = Mode.ASYNC if self.callbacks.calls_back(spec_of(job)) else Mode.SYNC
        if self._free[kind] <= 0:
            # Every call of its kind is taken (slow answers): the entry waits in the outbox, and
            # the jobs behind it that are sent the other way go on.
            await self._retry_later(lease, BUSY_DELAY, job, unsent=True)
            return
        # Slots are taken in lease order, so jobs leave the outbox in the order leased (the
        # shares' order); the request goes out right after its slot, with nothing between.
        self._free[kind] -= 1
        # Charged for what it sends: not for an entry that only waits (a callback deadline, a
        # sync job its caller is sending).
        self._fair.charge(job.client)
        try:
            taken = await self.caller.wait_slot()
        except BaseException:
            self._release(kind)
            raise
        self.caller.calling()
        task = asyncio.create_task(
            self._submit(lease, job, kind, taken), name=f"submit:{lease.job_id}"
        )
        self._in_flight.add(task)
        task.add_done_callback(lambda done: self._done(done, kind))

    def _release(self, kind: Mode) -> None:
        self._free[kind] += 1
        self._slot_freed.set()

    def _done(self, task: asyncio.Task[None], kind: Mode) -> None:
        self._in_flight.discard(task)
        self._release(kind)
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox: submission crashed", exc_info=task.exception())

    async def stop(self) -> None:
        """Let submissions in flight finish: their leases come back if they do not."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self.submit_timeout)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def _retry_later(
        self, lease: Lease, delay: float, job: Job, *, unsent: bool = False
    ) -> None:
        """Put the entry back for `delay` seconds, and look again when it comes due: without
        this, a retry would wait for the next idle poll, not for its backoff or Retry-After.
        `job`: the job it holds; `unsent`: not sent upstream yet."""
        await self.store.retry_later(lease, delay)
        if unsent:
            until = self.clock() + delay + self.visibility
            self.observer.outbox_pending(job.job_id, _queued_at(job), until)
        handle: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(handle)
            self.wake(job.client)

        handle = asyncio.get_running_loop().call_later(delay + DUE_MARGIN, due)
        self._timers.add(handle)

    async def _await_callback(self, lease: Lease, job: Job) -> None:
        """A job waiting for its terminal webhook: fail it `callback_overdue` once its deadline
        has passed, else look again then."""
        with logfields.about(job_id=job.job_id, client=job.client, dispatch_id=job.dispatch_id):
            await self._check_deadline(lease, job)

    async def _check_deadline(self, lease: Lease, job: Job) -> None:
        submitted_at = job.created_at
        async for event in self.records.events_of(job):
            if event.type == states.SUBMITTED:
                submitted_at = event.record_time or event.event_time
                break
        deadline = self.callbacks.deadline(job.services)
        due = submitted_at + deadline
        now = self.clock()
        if now < due:
            await self._retry_later(lease, due - now, job)
            return
        failure = UpstreamFailure(
            states.OVERDUE,
            f"no terminal webhook came within {deadline:g} s of the job's submission "
            f"(dispatch {job.dispatch_id or 'unknown'}); one that comes later is still recorded",
        )
        recorded = await self.records.fail(job, failure)
        # Not when its terminal webhook came meanwhile (on any replica): the job ended by it, and
        # this failure is recorded after the end, as any late event is.
        if recorded is not None and recorded.terminal:
            log.warning("outbox: %s: %s", job.job_id, failure.message)
            self.observer.callback_overdue(job.service.value)
        await self.store.ack(lease)

    async def _submit(self, lease: Lease, job: Job, kind: Mode, taken: float) -> None:
        # A task of its own: what it logs is about this job.
        logfields.known(job_id=job.job_id, client=job.client)
        try:
            if asyncio.get_running_loop().time() - taken > SLOT_FRESHNESS:
                await self.caller.wait_slot()
            # The point of no return, settled in the store against a cancel (see
            # Store.begin_submission): a job canceled first is dropped here, unsent.
            if (await self.store.begin_submission(job.job_id)).state.terminal:
                self.observer.outbox_settled(job.job_id)
                await self.store.ack(lease)
                return
            await self._submit_and_record(lease, job, kind)
        except StoreUnavailable as exc:
            # Sent or not, the outcome could not be recorded: the entry goes back when the
            # store answers, and the same idempotency key makes a second send harmless.
            log.warning("outbox: %s: store unavailable (%s); will retry", job.job_id, exc)
            self._stranded.append(lease)
            self.wake()

    async def _submit_and_record(self, lease: Lease, job: Job, kind: Mode) -> None:
        calls_back = kind is Mode.ASYNC
        try:
            answer = await self.caller.dispatch(
                job,
                calls_back=calls_back,
                timeout=self.submit_timeout if calls_back else self.sync_timeout,
            )
        except UpstreamError as exc:
            await self.records.attempt(job, exc.attempt)
            age = self.clock() - _queued_at(job)
            if exc.retryable and age < self.policy.give_up_after:
                delay = self.policy.delay(lease.attempts, exc.retry_after)
                log.info(
                    "outbox: %s not accepted (%s); retry %d in %.1f s",
                    job.job_id,
                    exc.failure.code,
                    lease.attempts + 1,
                    delay,
                )
                self.observer.upstream_dispatch("retried")
                await self._retry_later(lease, delay, job, unsent=True)
                return
            failure = exc.failure
            if exc.retryable:
                failure = UpstreamFailure(
                    failure.code,
                    f"gave up after {age:.0f} s and {lease.attempts + 1} tries: {failure.message}",
                    failure.http_status,
                    failure.details,
                )
            log.warning("outbox: %s failed: %s", job.job_id, failure.code)
            self.observer.upstream_dispatch("failed")
            self.observer.outbox_settled(job.job_id)
            await self.records.fail(job, failure)
            await self.store.ack(lease)
            return
        self.observer.upstream_dispatch("accepted")
        self.observer.outbox_settled(job.job_id)
        if calls_back:
            recorded = await self.records.submitted(job, answer)
            if recorded is not None and recorded.state.terminal:
                await self.store.ack(lease)  # its webhooks came before its acceptance
                return
            # The entry stays, due at the job's deadline.
            await self._retry_later(lease, self.callbacks.deadline(job.services), job)
        else:
            await self.records.completed(job, answer)
            await self.store.ack(lease)


def _queued_at(job: Job) -> float:
    """Since when the job has been waiting to be sent: its creation, or its scheduled time."""
    return max(job.created_at, job.not_before)
