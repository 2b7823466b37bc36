"""The `Store` contract in this process's memory: what core's unit tests run on, the role
httpx's MockTransport plays for a client: the real contract (the contract suite in tests/contract
runs on it as on every backend), no file, no server, nothing kept after the process.

Jobs and events are kept as the codec's JSON text, as the durable backends keep them, so what it
hands out is a fresh copy that shares nothing with what a caller passed in or got before.

Every method runs to completion without awaiting anything, so each is atomic: concurrent calls
on one event loop never interleave. `clock` times the outbox and the rate limit, as in
SqliteStore; a test moves it to let a lease or a window run out.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from ..core.errors import NotFound, StoreUnavailable
from ..core.model import Job, JobEvent, Lease, Priority, QueueDepth
from ..core.ports import Apply, Clock
from ..core.query import JobQuery
from . import codec
from .codec import DEFAULT_DEDUPE_TTL, SECRET_BYTES

LEASE_TOKEN_BYTES = 16


@dataclass(slots=True)
class _Entry:
    """An outbox entry; `token` and `leased_until` are its current lease's, if any."""

    job_id: str
    due_at: float
    client: str = ""
    priority: Priority = Priority.NORMAL
    attempts: int = 0
    leased_until: float = 0.0
    token: str = ""


@dataclass(frozen=True, slots=True)
class _LeaseHandle:
    entry_id: int
    token: str


class MemoryStore:
    """The `Store` contract in memory. Closing it keeps what it holds: opened again, it is the
    same store, as a file or a server would be."""

    def __init__(self, *, dedupe_ttl: float = DEFAULT_DEDUPE_TTL, clock: Clock = time.time) -> None:
        self._clock = clock
        self._dedupe_ttl = dedupe_ttl
        self._open = False
        self._jobs: dict[str, str] = {}
        self._keys: dict[tuple[str, str], str] = {}
        """(client, idempotency key) → job id."""
        self._events: list[tuple[str, str]] = []
        """(client, event JSON); an event's cursor is its index + 1."""
        self._dedupe: dict[str, float] = {}
        self._outbox: dict[int, _Entry] = {}
        self._next_entry = 1
        self._rate: list[float] = []
        self._secrets: dict[str, bytes] = {}
        self._waiting: set[asyncio.Event] = set()
        """One per tail waiting for the next append."""

    # Lifecycle

    async def open(self) -> None:
        if self._open:
            raise RuntimeError("store is already open")
        self._open = True

    async def close(self) -> None:
        self._open = False
        for waiting in self._waiting:
            waiting.set()

    async def check(self) -> None:
        self._ensure_open()

    async def secret(self, name: str) -> bytes:
        self._ensure_open()
        return self._secrets.setdefault(name, secrets.token_bytes(SECRET_BYTES))

    # Jobs

    async def create_job(
        self, job: Job, first_event: JobEvent, *, enqueue: bool
    ) -> tuple[Job, bool]:
        self._ensure_open()
        existing = (
            self._keys.get((job.client, job.idempotency_key)) if job.idempotency_key else None
        )
        if existing is None and job.job_id in self._jobs:
            existing = job.job_id
        if existing is not None:
            return self._job(existing), False
        self._jobs[job.job_id] = codec.dumps(codec.job_to_json(job))
        if job.idempotency_key:
            self._keys[(job.client, job.idempotency_key)] = job.job_id
        self._record(first_event.replace(record_time=time.time()))
        if enqueue:
            self._outbox[self._next_entry] = _Entry(
                job.job_id, due_at=self._clock(), client=job.client, priority=job.priority
            )
            self._next_entry += 1
        return self._job(job.job_id), True

    async def create_job_taking_slot(
        self, job: Job, first_event: JobEvent, *, limit: int, window: float
    ) -> tuple[Job, bool, float]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        # Nothing awaited in between: atomic, as one transaction.
        stored, created = await self.create_job(job, first_event, enqueue=True)
        return stored, created, await self.acquire_rate(limit=limit, window=window)

    async def create_jobs(
        self, new: Sequence[tuple[Job, JobEvent]], *, enqueue: bool
    ) -> list[tuple[Job, bool]]:
        self._ensure_open()
        # Nothing awaited in between: atomic, as one transaction.
        return [await self.create_job(job, first, enqueue=enqueue) for job, first in new]

    async def get_job(self, job_id: str) -> Job | None:
        self._ensure_open()
        return self._job(job_id) if job_id in self._jobs else None

    async def job_by_key(self, client: str, idempotency_key: str) -> Job | None:
        self._ensure_open()
        job_id = self._keys.get((client, idempotency_key))
        return None if job_id is None else self._job(job_id)

    async def list_jobs(
        self, client: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        start = codec.page_start(limit, page_token)
        self._ensure_open()
        return self._page(JobQuery(client=client), limit, start)

    async def find_jobs(
        self, query: JobQuery, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        start = codec.page_start(limit, page_token)
        self._ensure_open()
        return self._page(query, limit, start)

    def _page(
        self, query: JobQuery, limit: int, start: tuple[float, str] | None
    ) -> tuple[list[Job], str]:
        jobs = [job for job in map(self._job, self._jobs) if query.matches(job)]
        jobs.sort(key=lambda job: (job.created_at, job.job_id), reverse=True)
        if start is not None:
            jobs = [job for job in jobs if (job.created_at, job.job_id) < start]
        return codec.page_of(jobs, limit)

    async def begin_submission(self, job_id: str) -> Job:
        self._ensure_open()
        if job_id not in self._jobs:
            raise NotFound(f"job {job_id} not found")
        job = self._job(job_id)
        if job.submit_begun_at or job.state.terminal:
            return job
        job = job.replace(submit_begun_at=time.time())
        self._jobs[job_id] = codec.dumps(codec.job_to_json(job))
        return job

    # Outbox

    async def lease(
        self, *, limit: int, visibility: float, client: str | None = None
    ) -> list[Lease]:
        self._ensure_open()
        now = self._clock()
        due = sorted(
            (entry.priority.rank, entry.due_at, entry_id)
            for entry_id, entry in self._outbox.items()
            if entry.due_at <= now
            and entry.leased_until <= now
            and (client is None or entry.client == client)
        )
        leases = []
        for _, _, entry_id in due[:limit]:
            entry = self._outbox[entry_id]
            handle = _LeaseHandle(entry_id, secrets.token_hex(LEASE_TOKEN_BYTES))
            leases.append(Lease(job_id=entry.job_id, attempts=entry.attempts, handle=handle))
            entry.attempts += 1
            entry.leased_until = now + visibility
            entry.token = handle.token
        return leases

    async def outbox_depths(self) -> dict[str, dict[Priority, QueueDepth]]:
        self._ensure_open()
        counts: dict[tuple[str, Priority], list[int]] = {}
        now = self._clock()
        for entry in self._outbox.values():
            if entry.due_at > now:
                continue
            count = counts.setdefault((entry.client, entry.priority), [0, 0])
            count[entry.attempts > 0] += 1
        depths: dict[str, dict[Priority, QueueDepth]] = {}
        for (client, priority), (fresh, other) in counts.items():
            depths.setdefault(client, {})[priority] = QueueDepth(fresh, other)
        return depths

    async def ack(self, lease: Lease) -> None:
        self._ensure_open()
        handle = _handle_of(lease)
        if self._current(handle) is not None:
            del self._outbox[handle.entry_id]

    async def retry_later(self, lease: Lease, delay: float) -> None:
        self._ensure_open()
        entry = self._current(_handle_of(lease))
        if entry is not None:
            entry.due_at = self._clock() + delay
            entry.leased_until = 0.0
            entry.token = ""

    # Events

    async def append_event(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        """See `Store.append_event`. An empty `dedupe_key` is no key, like None."""
        self._ensure_open()
        now = time.time()
        self._dedupe = {k: t for k, t in self._dedupe.items() if t >= now - self._dedupe_ttl}
        if dedupe_key and dedupe_key in self._dedupe:
            return None
        if event.job_id not in self._jobs:
            raise NotFound(f"job {event.job_id} not found")
        job = self._job(event.job_id)
        after, recorded = apply(job, event.replace(record_time=now))
        job = job.replace(**{name: getattr(after, name) for name in codec.JOB_STATE_FIELDS})
        self._jobs[job.job_id] = codec.dumps(codec.job_to_json(job))
        if dedupe_key:
            self._dedupe[dedupe_key] = now
        return self._record(recorded.replace(record_time=now))

    async def append_events(
        self, events: Sequence[tuple[JobEvent, str | None]], *, apply: Apply
    ) -> list[JobEvent | None]:
        self._ensure_open()
        return [await self.append_event(e, dedupe_key=key, apply=apply) for e, key in events]

    async def read_events(
        self, *, client: str, after: str = "", job_id: str = "", limit: int = 1000
    ) -> list[JobEvent]:
        seq = codec.parse_cursor(after)
        self._ensure_open()
        events = []
        for event in self._events_after(seq, client):
            if not job_id or event.job_id == job_id:
                events.append(event)
                if len(events) == limit:
                    break
        return events

    def tail(self, *, after: str) -> AsyncIterator[JobEvent]:
        return self._tail(codec.parse_cursor(after))

    async def last_cursor(self) -> str:
        self._ensure_open()
        return str(len(self._events)) if self._events else ""

    async def cursor_before(self, when: float) -> str:
        self._ensure_open()
        for index, event in enumerate(self._events_after(0)):
            if event.record_time >= when:
                return str(index) if index else ""
        return await self.last_cursor()

    # Rate limit

    async def acquire_rate(self, *, limit: int, window: float) -> float:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._ensure_open()
        now = self._clock()
        self._rate = [taken for taken in self._rate if taken > now - window]
        if len(self._rate) < limit:
            self._rate.append(now)
            return 0.0
        return min(self._rate) + window - now

    # Internals

    def _ensure_open(self) -> None:
        if not self._open:
            raise StoreUnavailable("store is not open")

    def _job(self, job_id: str) -> Job:
        return codec.job_from_json(json.loads(self._jobs[job_id]))

    def _record(self, event: JobEvent) -> JobEvent:
        self._events.append((event.client, codec.dumps(codec.event_to_json(event))))
        for waiting in self._waiting:
            waiting.set()
        return event.replace(cursor=str(len(self._events)))

    def _events_after(self, seq: int, client: str = "") -> Iterator[JobEvent]:
        """The events after `seq`, only `client`'s when given."""
        for index in range(seq, len(self._events)):
            owner, text = self._events[index]
            if not client or owner == client:
                yield codec.event_from_json(json.loads(text), str(index + 1))

    def _current(self, handle: _LeaseHandle) -> _Entry | None:
        """The entry, if `handle` names its current lease."""
        entry = self._outbox.get(handle.entry_id)
        if entry is None or entry.token != handle.token or entry.leased_until <= self._clock():
            return None
        return entry

    async def _tail(self, seq: int) -> AsyncIterator[JobEvent]:
        while True:
            self._ensure_open()
            if seq < len(self._events):
                for event in self._events_after(seq):
                    seq = int(event.cursor)
                    yield event
                continue
            appended = asyncio.Event()
            # Removed on every way out, cancellation included: a tail given up on leaves
            # nothing behind.
            self._waiting.add(appended)
            try:
                await appended.wait()
            finally:
                self._waiting.discard(appended)


def _handle_of(lease: Lease) -> _LeaseHandle:
    if not isinstance(lease.handle, _LeaseHandle):
        raise TypeError("the lease was not handed out by a MemoryStore")
    return lease.handle
