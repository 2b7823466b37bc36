"""The SQLite store as a gateway's workers use it (GATEWAY_WORKERS): several handles on one file,
each with its own connection, writer thread and tails, woken by the others' commits (Neighbours).
`SharedFile` is one `Store` over them that takes turns, so that every operation of the contract
suite is answered by a handle other than the one that did the last: a job created by one worker
is read, leased, acked, appended to and tailed by another."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from dispatcher_gateway.core.model import Job, JobEvent, Lease, Priority, QueueDepth
from dispatcher_gateway.core.ports import Apply, Clock
from dispatcher_gateway.core.query import JobQuery
from dispatcher_gateway.store.sqlite import Neighbours, SqliteStore

WORKERS = 2


def worker_stores(path: Path, clock: Clock, count: int = WORKERS) -> list[SqliteStore]:
    """`count` handles on one file, neighbours of each other (a group of their own)."""
    group = f"test-{uuid.uuid4().hex[:12]}"
    return [
        SqliteStore(path, clock=clock, neighbours=Neighbours(group, index, count))
        for index in range(count)
    ]


class SharedFile:
    """The `Store` contract, each call answered by the next handle in turn."""

    def __init__(self, stores: list[SqliteStore]) -> None:
        self.stores = stores
        self._turns = itertools.cycle(stores)

    def _next(self) -> SqliteStore:
        return next(self._turns)

    async def open(self) -> None:
        for store in self.stores:
            await store.open()

    async def close(self) -> None:
        for store in self.stores:
            await store.close()

    async def check(self) -> None:
        for store in self.stores:
            await store.check()

    async def secret(self, name: str) -> bytes:
        return await self._next().secret(name)

    async def create_job(
        self, job: Job, first_event: JobEvent, *, enqueue: bool
    ) -> tuple[Job, bool]:
        return await self._next().create_job(job, first_event, enqueue=enqueue)

    async def create_job_taking_slot(
        self, job: Job, first_event: JobEvent, *, limit: int, window: float
    ) -> tuple[Job, bool, float]:
        return await self._next().create_job_taking_slot(
            job, first_event, limit=limit, window=window
        )

    async def create_jobs(
        self, new: Sequence[tuple[Job, JobEvent]], *, enqueue: bool
    ) -> list[tuple[Job, bool]]:
        return await self._next().create_jobs(new, enqueue=enqueue)

    async def begin_submission(self, job_id: str) -> Job:
        return await self._next().begin_submission(job_id)

    async def get_job(self, job_id: str) -> Job | None:
        return await self._next().get_job(job_id)

    async def job_by_key(self, client: str, idempotency_key: str) -> Job | None:
        return await self._next().job_by_key(client, idempotency_key)

    async def list_jobs(
        self, client: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        return await self._next().list_jobs(client, limit=limit, page_token=page_token)

    async def find_jobs(
        self, query: JobQuery, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        return await self._next().find_jobs(query, limit=limit, page_token=page_token)

    async def lease(
        self, *, limit: int, visibility: float, client: str | None = None
    ) -> list[Lease]:
        return await self._next().lease(limit=limit, visibility=visibility, client=client)

    async def outbox_depths(self) -> dict[str, dict[Priority, QueueDepth]]:
        return await self._next().outbox_depths()

    async def ack(self, lease: Lease) -> None:
        await self._next().ack(lease)

    async def retry_later(self, lease: Lease, delay: float) -> None:
        await self._next().retry_later(lease, delay)

    async def append_event(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        return await self._next().append_event(event, dedupe_key=dedupe_key, apply=apply)

    async def append_events(
        self, events: Sequence[tuple[JobEvent, str | None]], *, apply: Apply
    ) -> list[JobEvent | None]:
        return await self._next().append_events(events, apply=apply)

    async def read_events(self, **kwargs: Any) -> list[JobEvent]:
        return await self._next().read_events(**kwargs)

    def tail(self, *, after: str) -> AsyncIterator[JobEvent]:
        return self._next().tail(after=after)

    async def cursor_before(self, when: float) -> str:
        return await self._next().cursor_before(when)

    async def last_cursor(self) -> str:
        return await self._next().last_cursor()

    async def acquire_rate(self, *, limit: int, window: float) -> float:
        return await self._next().acquire_rate(limit=limit, window=window)
