"""The gateway's use cases, built together in dependency order: the upstream caller and a job's
record first, then the outbox, then what the edges call (dispatches, reads, streams, webhook
recording), the outbox's wake handed to the dispatches at construction.

rpc/ calls `dispatches`, `reads`, `control` (cancel, retry) and `streams`; webhooks/ hands
verified callbacks to `webhooks`; app.py runs `outbox` and reports `caller.breaker`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .breaker import CircuitBreaker
from .callbacks import CallbackRules
from .caller import UPSTREAM_TIMEOUT, UpstreamCaller
from .control import JobControl
from .dispatch import Dispatches
from .fairshare import QueueEstimates, Weights, equal_weights
from .hub import EventHub
from .outbox import ASYNC_CONCURRENCY, SUBMIT_TIMEOUT, SYNC_CONCURRENCY, OutboxWorker
from .ports import JobTraces, NoObserver, Observer, Store, Upstream
from .rate import RateGate
from .reads import JobReads
from .recording import WebhookRecorder
from .records import JobRecords
from .retry import RateLimit, RetryPolicy
from .schedule import ScheduleRules
from .streams import EventStreams
from .tokens import CallbackTokens


@dataclass(frozen=True)
class OutboxLimits:
    """How long the outbox's calls wait for the upstream, and how many go at once."""

    submit_timeout: float = SUBMIT_TIMEOUT
    sync_timeout: float = UPSTREAM_TIMEOUT
    sync_concurrency: int = SYNC_CONCURRENCY
    async_concurrency: int = ASYNC_CONCURRENCY


@dataclass(frozen=True)
class Gateway:
    """Core's parts, each built once: no part is wired to another after construction."""

    caller: UpstreamCaller
    records: JobRecords
    outbox: OutboxWorker
    dispatches: Dispatches
    reads: JobReads
    control: JobControl
    streams: EventStreams
    webhooks: WebhookRecorder

    @classmethod
    def build(
        cls,
        store: Store,
        upstream: Upstream,
        tokens: CallbackTokens,
        *,
        public_url: str,
        rate: RateLimit,
        hub: EventHub,
        retry: RetryPolicy,
        breaker: CircuitBreaker,
        callbacks: CallbackRules,
        outbox: OutboxLimits | None = None,
        observer: Observer | None = None,
        traces: JobTraces | None = None,
        clock: Callable[[], float] = time.time,
        weights: Weights = equal_weights,
        schedule: ScheduleRules | None = None,
    ) -> Gateway:
        """`weights`: each client's weight in the share of the upstream rate."""
        observer = observer or NoObserver()
        limits = outbox or OutboxLimits()
        caller = UpstreamCaller(
            upstream,
            rate=RateGate(store, rate),
            breaker=breaker,
            tokens=tokens,
            public_url=public_url,
            observer=observer,
        )
        records = JobRecords(store, clock, observer=observer)
        worker = OutboxWorker(
            store,
            caller,
            records,
            retry,
            callbacks=callbacks,
            clock=clock,
            observer=observer,
            submit_timeout=limits.submit_timeout,
            sync_timeout=limits.sync_timeout,
            sync_concurrency=limits.sync_concurrency,
            async_concurrency=limits.async_concurrency,
            weights=weights,
        )
        reads = JobReads(store, records)
        return cls(
            caller=caller,
            records=records,
            outbox=worker,
            dispatches=Dispatches(
                store,
                caller,
                records,
                reads,
                callbacks=callbacks,
                clock=clock,
                queued=worker.wake,
                estimates=QueueEstimates(store, rate, weights=weights, clock=clock),
                observer=observer,
                schedule=schedule,
            ),
            reads=reads,
            control=JobControl(store, reads, clock=clock, queued=worker.wake, observer=observer),
            streams=EventStreams(store, hub, reads, clock=clock, observer=observer),
            webhooks=WebhookRecorder(
                store,
                tokens,
                clock=clock,
                observer=observer,
                traces=traces,
                own_ends=callbacks.providers,
            ),
        )
