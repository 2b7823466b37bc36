"""The upstream caller: how core sends a request upstream.

Every dispatch goes through the circuit breaker and the account's rate limit, shared by every
replica through the store, and carries its job id as its idempotency key, so that sending it
again (a retry, the outbox taking over a lost sync call) never dispatches twice. The sync call
of a client (core/dispatch.py) and the outbox (core/outbox.py) both send through one caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from .breaker import CircuitBreaker
from .errors import UpstreamError
from .eventdata import deliverable_answer, deliverable_failure
from .model import JSON, DispatchSpec, Job, JobEvent, UpstreamAttempt, UpstreamFailure
from .ports import NoObserver, Observer, Upstream, UpstreamAnswer
from .rate import RateGate
from .retry import RateLimit
from .tokens import CallbackTokens

T = TypeVar("T")

UPSTREAM_TIMEOUT = 120.0
"""Seconds: the upstream's documented limit on a sync dispatch, so no call waits longer (and
the upstream client caps every call's timeout at it)."""
SMALL_CALL_TIMEOUT = 30.0
"""Seconds for a validation or the templates."""


def spec_of(job: Job) -> DispatchSpec:
    return DispatchSpec(job.services, job.mode, job.body, job.metadata, job.idempotency_key)


class UpstreamCaller:
    """The upstream, its circuit breaker and the account's rate limit, used together."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        rate: RateGate,
        breaker: CircuitBreaker,
        tokens: CallbackTokens,
        public_url: str,
        observer: Observer | None = None,
    ) -> None:
        self.upstream = upstream
        self.observer = observer or NoObserver()
        self.rate = rate
        self.breaker = breaker
        self.tokens = tokens
        self.public_url = public_url.rstrip("/")

    @property
    def rate_limit(self) -> RateLimit:
        return self.rate.rate

    def callback_url(self, job_id: str) -> str:
        return f"{self.public_url}/webhooks/dispatcher/{self.tokens.token(job_id)}"

    def paused(self) -> float:
        """0.0 when a call may go now, else the seconds until the circuit lets one through."""
        return self.breaker.wait()

    def check_breaker(self) -> None:
        """Fail fast while the upstream's circuit is open."""
        wait = self.breaker.wait()
        if wait > 0:
            failure = UpstreamFailure(
                "upstream_circuit_open",
                f"the upstream failed repeatedly; the gateway tries it again in {wait:.0f} s",
            )
            raise UpstreamError(failure, retryable=True, retry_after=wait)

    async def create_taking_slot(self, job: Job, first_event: JobEvent) -> tuple[Job, bool, float]:
        """Store the job, queued, and take a rate slot now if there is one, in one write: the
        job and whether it was created (as Store.create_job), and 0.0 if the slot was taken,
        else the seconds until one frees."""
        return await self.rate.create_taking(job, first_event)

    async def wait_slot(self, budget: float | None = None) -> float:
        """Wait for a rate slot at most `budget` seconds (None: as long as it takes); the loop's
        time when it was taken. Raises RateLimited past the budget."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self.rate.wait(budget)
        finally:
            self.observer.rate_waited(loop.time() - started)

    def calling(self) -> None:
        """A call is about to go (half open: it is the probe)."""
        self.breaker.calling()

    async def dispatch(self, job: Job, *, calls_back: bool, timeout: float) -> UpstreamAnswer:
        """Send the job upstream: in async mode with its callback URL when `calls_back`."""
        try:
            answer = await self._call(
                self.upstream.dispatch(
                    spec_of(job),
                    idempotency_key=job.job_id,
                    callback_url=self.callback_url(job.job_id) if calls_back else None,
                    timeout=timeout,
                    trace_context=job.trace_context,
                )
            )
        except UpstreamError as exc:
            self._observe(exc.attempt)
            raise
        self._observe(answer.attempt)
        return answer

    def _observe(self, attempt: UpstreamAttempt | None) -> None:
        if attempt is not None:
            self.observer.upstream_request(
                attempt.endpoint, attempt.mode.value, attempt.http_status, attempt.latency
            )

    async def _call(self, call: Awaitable[T]) -> T:
        """Make one upstream call, telling the circuit breaker how it went."""
        self.breaker.calling()
        try:
            result = await call
        except UpstreamError as exc:
            # A refusal is an answer: the upstream is up. No answer, or its own failure, is not.
            if exc.retryable and not exc.refused:
                self.breaker.failure()
            else:
                self.breaker.success()
            # Callers read the failure (the status's details), and it becomes the job's error.
            exc.failure = deliverable_failure(exc.failure, "a dispatch")
            raise
        self.breaker.success()
        return result

    async def validate(self, spec: DispatchSpec) -> JSON:
        try:
            answer = await self.upstream.validate(spec, timeout=SMALL_CALL_TIMEOUT)
        except UpstreamError as exc:
            exc.failure = deliverable_failure(exc.failure, "a validation")
            raise
        return deliverable_answer(answer, "a validation")

    async def templates(self) -> list[JSON]:
        return await self.upstream.templates(timeout=SMALL_CALL_TIMEOUT)
