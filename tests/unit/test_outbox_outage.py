"""The outbox worker through a store outage: whichever store call fails, the worker lives on,
and the entries it held go back as soon as the store answers, not a visibility later."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.core.gateway import Gateway
from dispatcher_gateway.core.model import DispatchSpec, JobState, Mode, Service
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import NEVER_OPENS, build_core, running_outbox
from ..support.upstream import ScriptedUpstream, failure

RECOVERY = 3.0
"""Seconds a job may take to go out once the store is back: well under the lease visibility
(the rate window + the submit timeout + 30 s), so a lease left to run out would fail the test."""
WAIT_TIMEOUT = 10.0


class FlakyStore:
    """A real store whose calls named in `down` raise StoreUnavailable, as while NATS is
    away; counts each call's failures and successes."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.down: set[str] = set()
        self.failed: collections.Counter[str] = collections.Counter()
        self.succeeded: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if name in self.down:
                self.failed[name] += 1
                raise StoreUnavailable(f"{name}: the store is away")
            result = await method(*args, **kwargs)
            self.succeeded[name] += 1
            return result

        return call


@dataclass
class Harness:
    store: FlakyStore
    upstream: ScriptedUpstream
    gateway: Gateway
    worker: asyncio.Task[None]

    async def queue(self) -> str:
        spec = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1, "data": {}}})
        return (await self.gateway.dispatches.submit("anonymous", spec, budget=None)).job_id

    async def until(self, condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.01)

    async def state(self, job_id: str) -> JobState:
        job = await self.store.inner.get_job(job_id)
        assert job is not None
        return job.state


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[Harness]:
    inner = MemoryStore()
    await inner.open()
    store = FlakyStore(inner)
    upstream = ScriptedUpstream()
    gateway = build_core(store, upstream, breaker_threshold=NEVER_OPENS)
    try:
        async with running_outbox(gateway) as task:
            yield Harness(store, upstream, gateway, task)
    finally:
        await inner.close()


# Each store call the worker makes for one entry, in the order it makes them. retry_later is
# reached through a 503 from the upstream; append_events is the record of the upstream's answer
# and its attempt (an email is sent in sync mode, in the background: the answer is the job's end).
CALLS = ("lease", "get_job", "acquire_rate", "append_events", "ack", "retry_later")


@pytest.mark.parametrize("call", CALLS)
async def test_the_worker_outlives_an_outage_and_sends_the_job_once_the_store_answers(
    call: str,
) -> None:
    async with running() as h:
        if call == "retry_later":
            h.upstream.script = [failure(503, "service_unavailable")]
        h.store.down = {call}
        job_id = await h.queue()

        async def failed_twice() -> bool:
            return h.store.failed[call] >= 2 or (call != "lease" and h.store.failed[call] >= 1)

        await h.until(failed_twice, WAIT_TIMEOUT)
        assert not h.worker.done()
        h.store.down = set()

        async def settled() -> bool:
            acked = h.store.succeeded["ack"] >= 1
            return acked and await h.state(job_id) is JobState.SUCCEEDED

        await h.until(settled, RECOVERY)
        assert not h.worker.done()
        # Every send carried the job's id as its idempotency key: a second one is harmless.
        assert set(h.upstream.keys) == {job_id}
