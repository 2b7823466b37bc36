"""The outbox worker: submits queued async jobs upstream, in order, within the rate limit,
retrying what is safe to retry. Every submission of a job carries the same idempotency key (the
job id), so a retry after a lost answer or a crash never dispatches twice."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from ..metrics import UPSTREAM_CALLS
from ..store.base import Store
from .errors import StoreUnavailable, UpstreamError
from .model import Job, JobState, Lease, UpstreamFailure
from .retry import RetryPolicy
from .service import Gateway, spec_of

log = logging.getLogger("dispatcher_gateway.outbox")

LEASE_MARGIN = 30.0
"""Added to the longest a lease can legitimately be held (a rate window, then a submission)
to get its visibility: a worker that died holding entries gives them back then."""
SUBMIT_TIMEOUT = 30.0
"""An async submission is answered in well under a second (documented: < 200 ms); past this,
try again later."""
LEASE_BATCH = 50
IDLE_POLL = 1.0
"""Seconds between looks at an idle outbox (for other replicas' jobs and retries come due)."""
MAX_IN_FLIGHT = 32
"""Submissions awaiting the upstream's answer at once."""
DUE_MARGIN = 0.005
"""Seconds added to a retry's delay before looking for it: the store's clock is not the loop's."""


class OutboxWorker:
    def __init__(
        self,
        gateway: Gateway,
        store: Store,
        policy: RetryPolicy,
        *,
        submit_timeout: float = SUBMIT_TIMEOUT,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.policy = policy
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._stranded: collections.deque[Lease] = collections.deque()
        """Leases an outage kept the worker from finishing, handed back when the store answers."""
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.submit_timeout = submit_timeout
        rate = gateway.rate.rate
        # Leasing no more than the rate admits in one window bounds how long a lease waits.
        self._batch = min(LEASE_BATCH, rate.limit)
        self._visibility = rate.window + submit_timeout + LEASE_MARGIN

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                leases = await self._lease()
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
                        break
        finally:
            await self.stop()

    async def _lease(self) -> list[Lease]:
        """Hand back what an outage stranded, then lease; nothing while the store is away."""
        try:
            while self._stranded:
                await self.store.retry_later(self._stranded[0], 0.0)
                self._stranded.popleft()
            return await self.store.lease(limit=self._batch, visibility=self._visibility)
        except StoreUnavailable as exc:
            log.warning("outbox: store unavailable (%s); retrying", exc)
            return []

    async def _start(self, lease: Lease) -> None:
        """Send one entry's job upstream as a task of its own, or settle it without sending."""
        paused = self.gateway.breaker.wait()
        if paused > 0:
            # The circuit is open: the entry waits in the outbox, not in memory.
            await self._retry_later(lease, paused)
            return
        job = await self.store.get_job(lease.job_id)
        if job is None or job.state is not JobState.QUEUED:
            # Gone, or already accepted upstream (its webhook may even have come first):
            # nothing to send, and no slot of the rate limit spent on it.
            await self.store.ack(lease)
            return
        # Slots are taken in lease order, so jobs leave the outbox in the order queued; the
        # request goes out right after its slot, with nothing between.
        await self._slots.acquire()
        try:
            await self.gateway.rate.wait()
        except BaseException:
            self._slots.release()
            raise
        self.gateway.breaker.calling()
        task = asyncio.create_task(self._submit(lease, job), name=f"submit:{lease.job_id}")
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox: submission crashed", exc_info=task.exception())

    async def stop(self) -> None:
        """Let submissions in flight finish: their leases come back if they do not."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self.submit_timeout)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def _retry_later(self, lease: Lease, delay: float) -> None:
        """Put the entry back for `delay` seconds, and look again when it comes due: without
        this, a retry would wait for the next idle poll, not for its backoff or Retry-After."""
        await self.store.retry_later(lease, delay)
        handle: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(handle)
            self.wake()

        handle = asyncio.get_running_loop().call_later(delay + DUE_MARGIN, due)
        self._timers.add(handle)

    async def _submit(self, lease: Lease, job: Job) -> None:
        try:
            await self._submit_and_record(lease, job)
        except StoreUnavailable as exc:
            # Sent or not, the outcome could not be recorded: the entry goes back when the
            # store answers, and the same idempotency key makes a second send harmless.
            log.warning("outbox: %s: store unavailable (%s); will retry", job.job_id, exc)
            self._stranded.append(lease)
            self.wake()

    async def _submit_and_record(self, lease: Lease, job: Job) -> None:
        try:
            answer = await self.gateway.call_upstream(
                self.gateway.upstream.dispatch(
                    spec_of(job),
                    idempotency_key=job.job_id,
                    callback_url=self.gateway.callback_url(job.job_id),
                    timeout=self.submit_timeout,
                )
            )
        except UpstreamError as exc:
            age = self.gateway.clock() - job.created_at
            if exc.retryable and age < self.policy.give_up_after:
                delay = self.policy.delay(lease.attempts, exc.retry_after)
                log.info(
                    "outbox: %s not accepted (%s); retry %d in %.1f s",
                    job.job_id,
                    exc.failure.code,
                    lease.attempts + 1,
                    delay,
                )
                UPSTREAM_CALLS.inc("retried")
                await self._retry_later(lease, delay)
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
            UPSTREAM_CALLS.inc("failed")
            await self.gateway.fail(job, failure)
            await self.store.ack(lease)
            return
        UPSTREAM_CALLS.inc("accepted")
        await self.gateway.submitted(job, answer)
        await self.store.ack(lease)
