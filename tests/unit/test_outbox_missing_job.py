"""An outbox entry whose job is not in the store (core/outbox.py, MISSING_JOB_TRIES): the job may
still be landing, once the NATS store publishes a job's entry before it commits the job. The
entry is put back MISSING_JOB_TRIES times, MISSING_JOB_DELAY apart, and dropped only after that."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from dispatcher_gateway.core import outbox
from dispatcher_gateway.core.model import DispatchSpec, Job, JobState, Mode, Service
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import NEVER_OPENS, build_core, running_outbox
from ..support.upstream import FAST, ScriptedUpstream

WAIT_TIMEOUT = 10.0
QUICK = 0.01
"""MISSING_JOB_DELAY, and the idle outbox's poll, in these tests."""


class LandingStore(MemoryStore):
    """A memory store in which the jobs named in `landing` are not there yet for their first
    `looks` reads."""

    def __init__(self, looks: int) -> None:
        super().__init__()
        self.looks = looks
        self.landing: set[str] = set()
        self.missed = 0

    async def get_job(self, job_id: str) -> Job | None:
        if job_id in self.landing and self.missed < self.looks:
            self.missed += 1
            return None
        return await super().get_job(job_id)


@contextlib.asynccontextmanager
async def queued_while_landing(looks: int) -> AsyncIterator[tuple[LandingStore, ScriptedUpstream]]:
    store = LandingStore(looks)
    await store.open()
    upstream = ScriptedUpstream()
    gateway = build_core(store, upstream, retry=FAST, breaker_threshold=NEVER_OPENS)
    spec = DispatchSpec((Service.ESIGN,), Mode.ASYNC, {"template": {"id": 1, "data": {}}})
    try:
        job = await gateway.dispatches.submit("anonymous", spec, budget=None)
        store.landing.add(job.job_id)
        async with running_outbox(gateway):
            yield store, upstream
    finally:
        await store.close()


@pytest.fixture(autouse=True)
def quick_puts_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "MISSING_JOB_DELAY", QUICK)
    monkeypatch.setattr(outbox, "IDLE_POLL", QUICK)


async def test_an_entry_whose_job_is_still_landing_is_put_back_then_sent() -> None:
    async with queued_while_landing(looks=3) as (store, upstream):
        async with asyncio.timeout(WAIT_TIMEOUT):
            while not upstream.calls:
                await asyncio.sleep(QUICK)
        [job_id] = store.landing
        job = await store.get_job(job_id)

        assert store.missed == 3
        assert upstream.keys == [job_id]
        assert job is not None
        assert job.state is JobState.SUBMITTED


async def test_an_entry_whose_job_never_lands_is_dropped_after_its_tries() -> None:
    async with queued_while_landing(looks=outbox.MISSING_JOB_TRIES + 100) as (store, upstream):
        async with asyncio.timeout(WAIT_TIMEOUT):
            while store.missed <= outbox.MISSING_JOB_TRIES or await store.outbox_depths():
                await asyncio.sleep(QUICK)
        await asyncio.sleep(QUICK * 10)  # time for more looks, were it still there

        assert store.missed == outbox.MISSING_JOB_TRIES + 1
        assert await store.outbox_depths() == {}
        assert upstream.calls == []
