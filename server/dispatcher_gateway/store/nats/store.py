"""The multi-replica store backend: NATS JetStream (streams, KV buckets, a work queue; the
layout is in provision.py).

create_job claims the idempotency key (create-only; a loser waits briefly for the winner's job
and returns it, or, if the winner died before writing it, completes the create under the
winner's id), writes the list index, then commits the job (commit.py).

The rate limit is a sliding-window log of acquisition times in one KV key, updated by
compare-and-set, stamped with each replica's wall clock (replicas are assumed NTP-synced).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import Sequence
from typing import Final

from nats.aio.msg import Msg
from nats.js import api

from ...core.errors import StoreUnavailable
from ...core.model import Job, JobEvent, Lease, Priority, QueueDepth
from ...core.ports import Apply, Clock
from ...core.query import JobQuery
from .. import codec
from .commit import CAS_ATTEMPTS, CAS_JITTER, Journal
from .jetstream import JetStream, KeyExists, dumps, unavailable
from .lanes import Lanes
from .names import (
    Layout,
    index_key,
    parse_index_key,
    token,
)
from .provision import Shape, provision
from .tail import Tail

DEFAULT_PREFIX: Final = "dgw"
FIND_CHUNK: Final = 64
"""Jobs find_jobs loads at once while it filters them."""
DEFAULT_EVENT_MAX_AGE: Final = 30 * 24 * 3600.0
DUPLICATE_WINDOW: Final = 2 * 3600.0
"""JetStream's duplicate window on Nats-Msg-Id: it covers the upstream's webhook retries (at
5 s, 5 min and 30 min) and the outbox's redelivery."""
DEFAULT_TIMEOUT: Final = 5.0
"""Every request to NATS; beyond it the store is unavailable."""
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
CLAIM_POLL: Final = 0.01
CLAIMER_GRACE: Final = 1.0
"""Seconds a create that found its idempotency key claimed waits for the claimer's job before
completing the create in its name. Short: a claimer that failed (NATS away mid-create) leaves the
key claimed, and each retry of the caller must complete within the caller's own deadline (a
wait as long as the store's timeout was cancelled by such a deadline on every retry). Completing
while the claimer is only slow is safe: the job's create-only write lets one of them win."""
RATE_KEY: Final = "upstream"
"""The client whose lane is the outbox's legacy subject (no client is named '')."""
SEEK_MARGIN: Final = 10.0
"""Seconds before a seek's time from which the events stream is searched for the first event
recorded at or after it: more than an event's way from its replica's record time to the server
(with the replicas' and the servers' clocks in step, as the rate limit assumes too)."""
SEEK_PAGE: Final = 256


class NatsStore:
    """The `Store` contract on NATS JetStream, shared by every replica (see the module doc)."""

    def __init__(
        self,
        servers: list[str] | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        replicas: int = 1,
        event_max_age: float = DEFAULT_EVENT_MAX_AGE,
        dedupe_ttl: float = codec.DEFAULT_DEDUPE_TTL,
        duplicate_window: float = DUPLICATE_WINDOW,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        lease_grace: float | None = None,
        clock: Clock = time.monotonic,
        ca_file: str | None = None,
        token: str | None = None,
    ) -> None:
        """`clock` decides when outbox leases run out; `lease_grace` (default: `timeout`) is how
        much later the server hands their entries out again (see the module doc). `ca_file`: the
        CA that signs NATS's certificate (TLS); `token`: NATS's authorization token."""
        self.layout = Layout(prefix)
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self._shape = Shape(
            replicas=replicas,
            event_max_age=event_max_age,
            dedupe_ttl=dedupe_ttl,
            duplicate_window=min(duplicate_window, event_max_age),
        )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._ca_file = ca_file
        self._token = token
        self._js: JetStream | None = None
        self.lanes = Lanes(
            self._wire, self.layout, clock, timeout if lease_grace is None else lease_grace
        )
        """The outbox: its lanes, leases and their ends (lanes.py)."""
        self.journal = Journal(self._wire, self.layout)
        """Jobs and events written by the envelope commit protocol."""

    # Names

    @property
    def events_stream(self) -> str:
        return self.layout.events_stream

    @property
    def outbox_stream(self) -> str:
        return self.layout.outbox_stream

    def bucket(self, name: str) -> str:
        """The KV bucket's full name: jobs, jobs_by_client, idempotency, seen, rate, secrets."""
        return self.layout.bucket(name)

    # Lifecycle

    async def open(self) -> None:
        with unavailable():
            self._js = await JetStream.connect(
                self._servers,
                connect_timeout=self._connect_timeout,
                timeout=self._timeout,
                ca_file=self._ca_file,
                token=self._token,
            )
            try:
                await provision(self._js, self.layout, self._shape)
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        js, self._js = self._js, None
        if js is not None:
            await js.close()

    async def check(self) -> None:
        with unavailable():
            js = self._wire()
            if not js.is_connected:
                raise StoreUnavailable("NATS is not connected")
            await js.account_info()

    async def secret(self, name: str) -> bytes:
        with unavailable():
            value, _ = await self._create_or_read(
                self.bucket("secrets"), token(name), os.urandom(codec.SECRET_BYTES)
            )
            return value

    # Jobs

    async def create_job(
        self, job: Job, first_event: JobEvent, *, enqueue: bool
    ) -> tuple[Job, bool]:
        with unavailable():
            if job.idempotency_key:
                owner = await self._claim_idempotency_key(job)
                if owner != job.job_id:
                    existing = await self._wait_for_job(owner, CLAIMER_GRACE)
                    if existing is not None:
                        return existing, False
                    # The claimer died or failed before writing its job: complete the create in
                    # its name.
                    job = job.replace(job_id=owner)
                    first_event = first_event.replace(job_id=owner)
            if enqueue:
                await self.lanes.ensure(job.client, job.priority)
            await self._wire().kv_put(self.bucket("jobs_by_client"), index_key(job), b"")
            if not await self.journal.create(job, first_event, enqueue=enqueue):
                existing = await self._wait_for_job(job.job_id, self._timeout)
                if existing is None:  # deleted in between: nothing of ours to complete
                    raise StoreUnavailable("the job vanished while it was being created")
                return existing, False
            if enqueue:
                self.lanes.queued(job.client, job.priority)
            return job, True

    async def create_job_taking_slot(
        self, job: Job, first_event: JobEvent, *, limit: int, window: float
    ) -> tuple[Job, bool, float]:
        """No transaction spans the two: both sent at once."""
        (stored, created), wait = await asyncio.gather(
            self.create_job(job, first_event, enqueue=True),
            self.acquire_rate(limit=limit, window=window),
        )
        return stored, created, wait

    async def create_jobs(
        self, new: Sequence[tuple[Job, JobEvent]], *, enqueue: bool
    ) -> list[tuple[Job, bool]]:
        """No transaction spans jobs here: each is create_job's commit (its envelope), all
        sent at once on the one connection, so the batch costs about one create's round trips.
        Those sharing an idempotency key are created one after the other, as in a row."""
        first: dict[tuple[str, str], int] = {}
        later: list[int] = []
        for i, (job, _) in enumerate(new):
            if not job.idempotency_key:
                continue
            if first.setdefault((job.client, job.idempotency_key), i) != i:
                later.append(i)
        skip = set(later)
        done: dict[int, tuple[Job, bool]] = {}
        alone = [i for i in range(len(new)) if i not in skip]
        created = await asyncio.gather(
            *(self.create_job(new[i][0], new[i][1], enqueue=enqueue) for i in alone)
        )
        done.update(zip(alone, created, strict=True))
        for i in later:
            done[i] = await self.create_job(new[i][0], new[i][1], enqueue=enqueue)
        return [done[i] for i in range(len(new))]

    async def get_job(self, job_id: str) -> Job | None:
        with unavailable():
            return await self.journal.load(job_id, settle=True)

    async def job_by_key(self, client: str, idempotency_key: str) -> Job | None:
        key = hashlib.sha256(dumps([client, idempotency_key])).hexdigest()
        with unavailable():
            owner = await self._wire().kv_get(self.bucket("idempotency"), key)
            if owner is None:
                return None
            return await self.journal.load(owner.value.decode(), settle=True)

    async def list_jobs(
        self, client: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        start = codec.page_start(limit, page_token)
        with unavailable():
            entries = await self._index_entries(token(client))
            if start is not None:
                entries = [e for e in entries if e < start]
            jobs: list[Job] = []
            while entries and len(jobs) <= limit:
                want = limit + 1 - len(jobs)
                chunk, entries = entries[:want], entries[want:]
                found = await asyncio.gather(*(self.journal.load(job_id) for _, job_id in chunk))
                # An entry without its job, or naming another creation time, is left by a create
                # that died before its commit point (and was completed by a retry).
                jobs.extend(
                    j
                    for (created_at, _), j in zip(chunk, found, strict=True)
                    if j is not None and j.created_at == created_at
                )
            return codec.page_of(jobs, limit)

    async def find_jobs(
        self, query: JobQuery, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        """The index of every client (or the one asked for), filtered by creation time from its
        keys; the jobs then loaded a chunk at a time and filtered by service and state."""
        start = codec.page_start(limit, page_token)
        with unavailable():
            entries = await self._index_entries(token(query.client) if query.client else "*")
            entries = [
                e for e in entries if query.created_in(e[0]) and (start is None or e < start)
            ]
            jobs: list[Job] = []
            while entries and len(jobs) <= limit:
                chunk, entries = entries[:FIND_CHUNK], entries[FIND_CHUNK:]
                found = await asyncio.gather(*(self.journal.load(job_id) for _, job_id in chunk))
                jobs.extend(
                    j
                    for (created_at, _), j in zip(chunk, found, strict=True)
                    if j is not None and j.created_at == created_at and query.matches(j)
                )
            return codec.page_of(jobs, limit)

    async def _index_entries(self, clients: str) -> list[tuple[float, str]]:
        """(created_at, job_id) of the jobs the index lists for `clients` (a client's subject
        token, or "*" for all), newest first."""
        index = self.bucket("jobs_by_client")
        msgs = await self._wire().read(
            f"KV_{index}",
            filter_subject=f"$KV.{index}.{clients}.>",
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=True,
        )
        # $KV.<bucket>.<client>.<created>.<job>; a key written again (a retried create) is
        # delivered again once the consumer has caught up.
        return sorted({parse_index_key(msg.subject.split(".", 3)[3]) for msg in msgs}, reverse=True)

    async def begin_submission(self, job_id: str) -> Job:
        """See `Store.begin_submission` and commit.py: the job's envelope is the commit point
        that a cancel's append and this write race for."""
        with unavailable():
            return await self.journal.begin_submission(job_id, time.time())

    # Outbox

    async def lease(
        self, *, limit: int, visibility: float, client: str | None = None
    ) -> list[Lease]:
        with unavailable():
            return await self.lanes.lease(limit, visibility, client)

    async def outbox_depths(self) -> dict[str, dict[Priority, QueueDepth]]:
        with unavailable():
            return await self.lanes.depths()

    async def ack(self, lease: Lease) -> None:
        with unavailable():
            await self.lanes.ack(lease)

    async def retry_later(self, lease: Lease, delay: float) -> None:
        with unavailable():
            await self.lanes.retry_later(lease, delay)

    # Events

    async def append_event(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        """See `Store.append_event` and commit.py. An empty `dedupe_key` is no key."""
        with unavailable():
            return await self.journal.append(event, dedupe_key=dedupe_key, apply=apply)

    async def append_events(
        self, events: Sequence[tuple[JobEvent, str | None]], *, apply: Apply
    ) -> list[JobEvent | None]:
        """Each its own commit, all sent at once."""
        return list(
            await asyncio.gather(
                *(self.append_event(e, dedupe_key=key, apply=apply) for e, key in events)
            )
        )

    async def read_events(
        self, *, client: str, after: str = "", job_id: str = "", limit: int = 1000
    ) -> list[JobEvent]:
        seq = codec.parse_cursor(after)
        if limit < 1:
            return []
        job = token(job_id) if job_id else ">"
        with unavailable():
            msgs = await self._wire().read(
                self.events_stream,
                filter_subject=f"{self.layout.events_subject}.{token(client)}.{job}",
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=seq + 1,
                limit=limit,
            )
            return [_event_from_msg(msg) for msg in msgs]

    def tail(self, *, after: str) -> Tail:
        return Tail(
            self._wire,
            stream=self.events_stream,
            subject=f"{self.layout.events_subject}.>",
            after=codec.parse_cursor(after),
            decode=_event_from_msg,
        )

    async def last_cursor(self) -> str:
        with unavailable():
            last = await self._wire().last_seq(self.events_stream)
            return str(last) if last else ""

    async def cursor_before(self, when: float) -> str:
        """JetStream's start time (the server's clock when it stored each event) finds where to
        look, SEEK_MARGIN early: an event is stored a moment after the replica that wrote it
        stamped its record time; from there, the events are read until the first recorded at or
        after `when`."""
        with unavailable():
            js = self._wire()
            # Nothing is stored before 1970.
            start = await js.first_seq_since(self.events_stream, max(0.0, when - SEEK_MARGIN))
            while start is not None:
                msgs = await js.read(
                    self.events_stream,
                    filter_subject=f"{self.layout.events_subject}.>",
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    limit=SEEK_PAGE,
                )
                for msg in msgs:
                    if _event_from_msg(msg).record_time >= when:
                        seq = msg.metadata.sequence.stream
                        return str(seq - 1) if seq > 1 else ""
                if len(msgs) < SEEK_PAGE:
                    break
                start = msgs[-1].metadata.sequence.stream + 1
            last = await js.last_seq(self.events_stream)
            return str(last) if last else ""

    # Rate limit

    async def acquire_rate(self, *, limit: int, window: float) -> float:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with unavailable():
            bucket = self.bucket("rate")
            for _ in range(CAS_ATTEMPTS):
                js = self._wire()
                entry = await js.kv_get(bucket, RATE_KEY)
                now = time.time()
                taken = json.loads(entry.value or b"[]") if entry is not None else []
                taken = [t for t in taken if t > now - window]
                if len(taken) >= limit:
                    return float(min(taken) + window - now)
                taken.append(now)
                try:
                    await js.kv_write(
                        bucket, RATE_KEY, dumps(taken), last=entry.revision if entry else 0
                    )
                except KeyExists:
                    await asyncio.sleep(random.uniform(0, CAS_JITTER))
                    continue
                return 0.0
            raise StoreUnavailable("the rate limit is too contended to update")

    # Internals

    def _wire(self) -> JetStream:
        """The connection; StoreUnavailable while the store is not open."""
        if self._js is None:
            raise StoreUnavailable("the NATS store is not open")
        return self._js

    async def _claim_idempotency_key(self, job: Job) -> str:
        """The id of the job that owns (client, key): this one if the claim is ours."""
        key = hashlib.sha256(dumps([job.client, job.idempotency_key])).hexdigest()
        owner, _ = await self._create_or_read(self.bucket("idempotency"), key, job.job_id.encode())
        return owner.decode()

    async def _create_or_read(self, bucket: str, key: str, value: bytes) -> tuple[bytes, bool]:
        """Create the key with `value` unless it exists: (the value it holds, whether created).
        A create that lost to one still in flight on a clustered bucket can find nothing when it
        reads at once: the read is repeated until the winner's value is there."""
        js = self._wire()
        try:
            await js.kv_write(bucket, key, value, last=0)
            return value, True
        except KeyExists:
            pass
        deadline = time.monotonic() + self._timeout
        while True:
            entry = await js.kv_get(bucket, key)
            if entry is not None:
                return entry.value, False
            if time.monotonic() > deadline:
                raise StoreUnavailable("a concurrent create of the same key did not complete")
            await asyncio.sleep(CLAIM_POLL)

    async def _wait_for_job(self, job_id: str, wait: float) -> Job | None:
        """The job a concurrent creator is writing; None if it does not appear within `wait`
        seconds (that creator died, or failed, between claiming the key and writing the job)."""
        deadline = time.monotonic() + min(wait, self._timeout)
        while True:
            job = await self.journal.load(job_id, settle=True)
            if job is not None or time.monotonic() > deadline:
                return job
            await asyncio.sleep(CLAIM_POLL)


def _event_from_msg(msg: Msg) -> JobEvent:
    """An event of the events stream; its cursor is the stream sequence."""
    return codec.event_from_json(json.loads(msg.data), str(msg.metadata.sequence.stream))
