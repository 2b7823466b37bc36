"""Core built the way app.py builds it (core.gateway.Gateway.build), over a store a test gives
(the in-memory store, which passes the whole contract suite, or one wrapped to misbehave) and a
scripted upstream: the one builder core's unit tests use, so that none wires the parts by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dispatcher_gateway.core.breaker import CircuitBreaker
from dispatcher_gateway.core.callbacks import CallbackRules
from dispatcher_gateway.core.gateway import Gateway, OutboxLimits
from dispatcher_gateway.core.hub import EventHub
from dispatcher_gateway.core.model import (
    JSON,
    DispatchSpec,
    JobEvent,
    Mode,
    Service,
)
from dispatcher_gateway.core.ports import Observer, Store
from dispatcher_gateway.core.retry import RateLimit, RetryPolicy
from dispatcher_gateway.core.tokens import CallbackTokens
from dispatcher_gateway.store.memory import MemoryStore

from .upstream import FAST, UNLIMITED, ScriptedUpstream

TOKENS = CallbackTokens(b"k" * 32)
PUBLIC_URL = "https://gw.example"
CANCEL_AGAIN = 0.1
"""Seconds before a worker told to stop is cancelled again (see running_outbox)."""
NEVER_OPENS = 1_000_000
"""A breaker threshold no test reaches: the breaker has its own tests, and must not pause the
rules under test elsewhere."""


def build_core(
    store: Store | Any,
    upstream: ScriptedUpstream | None = None,
    *,
    hub: EventHub | None = None,
    rate: RateLimit = UNLIMITED,
    retry: RetryPolicy = FAST,
    breaker_threshold: int | None = None,
    callbacks: CallbackRules | None = None,
    sync_concurrency: int | None = None,
    observer: Observer | None = None,
) -> Gateway:
    """`store` may be a wrapper of a real store (typed Any for that)."""
    limits = OutboxLimits(submit_timeout=5.0)
    if sync_concurrency is not None:
        limits = OutboxLimits(submit_timeout=5.0, sync_concurrency=sync_concurrency)
    return Gateway.build(
        store,
        upstream or ScriptedUpstream(),
        TOKENS,
        public_url=PUBLIC_URL,
        rate=rate,
        hub=hub or EventHub(),
        retry=retry,
        breaker=CircuitBreaker()
        if breaker_threshold is None
        else CircuitBreaker(threshold=breaker_threshold),
        callbacks=callbacks or CallbackRules(),
        outbox=limits,
        observer=observer,
    )


@contextlib.asynccontextmanager
async def running_outbox(gateway: Gateway) -> AsyncIterator[asyncio.Task[None]]:
    """The gateway's outbox worker, running until the block ends."""
    task = asyncio.create_task(gateway.outbox.run())
    try:
        yield task
    finally:
        # Cancelled again until it ends: Python 3.11's asyncio.wait_for (the worker's idle wait)
        # swallows a cancellation that comes as its wait ends, and the worker would go on
        # polling for ever (the test then hangs until pytest-timeout's 120 s).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_AGAIN)
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Harness:
    gateway: Gateway
    store: MemoryStore
    upstream: ScriptedUpstream
    hub: EventHub

    async def job(self, client: str = "anonymous") -> str:
        spec = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1}})
        return (await self.gateway.dispatches.submit(client, spec, budget=None)).job_id

    async def webhook(
        self, job_id: str, event: str, webhook_id: str, *, data: JSON | None = None, **extra: str
    ) -> bool:
        envelope = {"event": event, "data": {} if data is None else data, **extra}
        return await self.gateway.webhooks.record_webhook(
            TOKENS.token(job_id), envelope, webhook_id=webhook_id
        )


@contextlib.asynccontextmanager
async def gateway_harness(observer: Observer | None = None) -> AsyncIterator[Harness]:
    """Core over an in-memory store, its hub following the store; no outbox running."""
    store = MemoryStore()
    await store.open()
    hub = EventHub(backlog=50)
    upstream = ScriptedUpstream()
    gateway = build_core(store, upstream, hub=hub, observer=observer)
    follower = asyncio.create_task(hub.follow(store))
    await asyncio.sleep(0.05)
    try:
        yield Harness(gateway, store, upstream, hub)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await store.close()


async def take(stream: AsyncIterator[JobEvent], count: int) -> list[JobEvent]:
    """The stream's next `count` events (10 s at most)."""
    out: list[JobEvent] = []
    async with asyncio.timeout(10):
        async for event in stream:
            out.append(event)
            if len(out) == count:
                break
    return out
