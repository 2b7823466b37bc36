"""The envelope commit protocol: how a job and its events are written without a transaction.

NATS has no transaction across a KV bucket and a stream, so the job's KV entry (its envelope) is
the commit point and carries the rest as pending effects. Appending an event, and why in this
order:

  1. Read the job's envelope (revision r). NotFound if absent.
  2. If the envelope's pending effects hold the event's message id (derived from the dedupe key),
     an earlier try of this same append committed: make sure they are published (5, 6) and
     return None. Else, if `seen` holds the message id, return None. (In this order: an event
     a later write overwrote was recorded seen before that write, so before step 1's read.)
  3. If the envelope still holds another write's pending event that this process has not seen
     settled, make sure it is published and recorded seen (a "helping" flush, below), so the
     log keeps the order in which the job was folded.
  4. apply(job, event) on the job as read; compare-and-set the envelope at revision r to
     {job after, pending: [event as recorded, with its message id]}. On a conflict, go to 1:
     apply runs again on the fresh job.
  5. Publish the event with Nats-Msg-Id = its message id; the PubAck's sequence is the cursor.
  6. Create seen[message id] = sequence (TTL: the seen bucket's, the dedupe TTL).

The pending event stays in the envelope until the job's next write replaces it: clearing it
would cost every append one more write. Whether it is settled is known from `seen`, which step 6
writes only after step 5; the process that settled it remembers that (SETTLED_MEMORY ids) and
does not ask. A helping flush (3, 2, load) of an event not known settled: `seen` holds it ->
done; else, if it is the last message on its job's subject, it was published (the job's next
commit waits for it, so nothing follows it there) -> record it seen; else publish it, record it
seen. The enqueue flag of a create is cleared once its outbox entry is published, as a
republish after the duplicate window would queue the job again.

A crash before 4 leaves nothing. A crash after 4 leaves a committed job whose event any later
write to that job (3), a load that settles, or a retry of the same append (2) publishes, once: a
publish is made only after the job's subject shows it is not there, and concurrent helpers are
deduped by JetStream's duplicate window on Nats-Msg-Id (it covers the upstream's webhook retries
and the outbox's redelivery). Events without a dedupe key get a random message id, fixed when
committed, so a helping flush and the original writer agree on it.

A create commits the same way: `create` writes the job's envelope (create-only) with its first
event and the enqueue flag pending, then publishes them (the outbox entry with Nats-Msg-Id
"enqueue.<job>"). A retry finds the job, flushes what is pending and returns it.

Fewer round trips. The appends of one process to one job take turns (a lock per job), and the
envelope this process last wrote is remembered (KNOWN_MEMORY jobs): an append starts from it
instead of reading (step 1), and its compare-and-set finds out whether another writer came in
between (then it reads, and goes on as above). One that holds effects not known settled is read
again first: another writer may have settled them and written since, and once the seen record
and the duplicate window have run out, a flush of the remembered envelope would publish them
again. Step 2 stays exact: the remembered revision was
written before the append's `seen` read is sent, so an event with the same key that it
overwrote was recorded seen before that read, just as for a revision read in step 1. One
replica's webhook then costs four requests (seen, compare-and-set, publish, record seen), three
before the event is in the stream; its turns on a job need no compare-and-set retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from ...core.errors import NotFound, StoreUnavailable
from ...core.model import Job, JobEvent
from ...core.ports import Apply
from .. import codec
from .jetstream import JetStream, KeyExists
from .names import Layout, dedupe_msg_id, enqueue_msg_id, random_msg_id, token

CAS_ATTEMPTS: Final = 1000
CAS_JITTER: Final = 0.005
"""At most this many seconds between two tries of a compare-and-set that lost."""
SETTLED_MEMORY: Final = 65536
"""Message ids of events this process knows settled (published, recorded seen), kept so that the
next write to their job need not check."""
KNOWN_MEMORY: Final = 16384
"""Jobs whose envelope this process last wrote, kept so that their next append need not read."""


@dataclass(frozen=True, slots=True)
class Pending:
    msg_id: str
    event: JobEvent


@dataclass(slots=True)
class Envelope:
    """What the jobs bucket holds for a job: the job, and its last write's unpublished effects."""

    job: Job
    pending: list[Pending] = field(default_factory=list)
    enqueue: bool = False

    def encode(self) -> bytes:
        return codec.dumps(
            {
                "job": codec.job_to_json(self.job),
                "pending": [
                    {"id": p.msg_id, "event": codec.event_to_json(p.event)} for p in self.pending
                ],
                "enqueue": self.enqueue,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Envelope:
        data = json.loads(raw or b"{}")
        return cls(
            job=codec.job_from_json(data["job"]),
            pending=[Pending(p["id"], codec.event_from_json(p["event"])) for p in data["pending"]],
            enqueue=bool(data["enqueue"]),
        )


class Known:
    """The envelopes this process last wrote, by job key, with their revisions: only the `size`
    newest are kept."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[str, tuple[int, Envelope]] = {}

    def get(self, key: str) -> tuple[int, Envelope] | None:
        return self._entries.get(key)

    def put(self, key: str, revision: int, envelope: Envelope) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (revision, envelope)
        if len(self._entries) > self._size:
            del self._entries[next(iter(self._entries))]

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)


class Turns:
    """One lock per key, held only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Recent:
    """A set that remembers only its `size` newest members."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._members: dict[str, None] = {}

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def add(self, member: str) -> None:
        self._members[member] = None
        if len(self._members) > self._size:
            del self._members[next(iter(self._members))]


class Journal:
    """Jobs and their events written by the envelope protocol (see the module doc), through the
    connection `wire` gives (it raises StoreUnavailable while the store is not open)."""

    def __init__(self, wire: Callable[[], JetStream], layout: Layout) -> None:
        self._wire = wire
        self._layout = layout
        self._jobs = layout.bucket("jobs")
        self._seen = layout.bucket("seen")
        self._settled = Recent(SETTLED_MEMORY)
        self._known = Known(KNOWN_MEMORY)
        self._turns = Turns()

    async def load(self, job_id: str, *, settle: bool = False) -> Job | None:
        """The job as committed; `settle`: publish what its last write left pending first."""
        entry = await self._wire().kv_get(self._jobs, token(job_id))
        if entry is None:
            return None
        envelope = Envelope.decode(entry.value)
        if settle and self.unsettled(envelope):
            await self.settle(job_id, entry.revision, envelope)
        return envelope.job

    async def create(self, job: Job, first_event: JobEvent, *, enqueue: bool) -> bool:
        """Commit a new job with its first event (and its outbox entry if `enqueue`), then
        publish them. False, and nothing written, if the job exists."""
        envelope = Envelope(
            job=job,
            pending=[Pending(random_msg_id(), first_event.replace(record_time=time.time()))],
            enqueue=enqueue,
        )
        try:
            revision = await self._wire().kv_write(
                self._jobs, token(job.job_id), envelope.encode(), last=0
            )
        except KeyExists:
            return False
        self._known.put(token(job.job_id), revision, envelope)
        await self.settle(job.job_id, revision, envelope, own=True)
        return True

    async def append(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        """Steps 1-6 of the module doc. An empty `dedupe_key` is no key."""
        key = token(event.job_id)
        async with self._turns.of(key):
            return await self._append(key, event, dedupe_key, apply)

    async def _append(
        self, key: str, event: JobEvent, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        msg_id = dedupe_msg_id(dedupe_key) if dedupe_key else None
        for _ in range(CAS_ATTEMPTS):
            wire = self._wire()
            known = self._known.get(key)
            if known is None:
                entry = await wire.kv_get(self._jobs, key)
                if entry is None:
                    raise NotFound(f"job {event.job_id} not found")
                revision, envelope = entry.revision, Envelope.decode(entry.value)
            else:
                revision, envelope = known
                if self.unsettled(envelope):
                    # Settled from the envelope as it is now: a pending event's being the last
                    # message of its job tells it was published only while it is the job's last
                    # write, which a remembered envelope may no longer be.
                    self._known.forget(key)
                    continue
            if msg_id is not None:
                if any(p.msg_id == msg_id for p in envelope.pending):
                    await self.settle(event.job_id, revision, envelope)
                    return None
                # Only after the job's read: an event with this key that a later write to the
                # job overwrote was recorded seen before that write.
                if await self.seen(msg_id) is not None:
                    return None
            if self.unsettled(envelope):
                await self.settle(event.job_id, revision, envelope)
                if envelope.enqueue:  # the envelope was written: read it again
                    self._known.forget(key)
                    continue
            now = time.time()
            job, recorded = apply(envelope.job, event.replace(record_time=now))
            recorded = recorded.replace(record_time=now, cursor="")
            pending = Pending(msg_id or random_msg_id(), recorded)
            committed = Envelope(job=job, pending=[pending], enqueue=False)
            try:
                revision = await wire.kv_write(self._jobs, key, committed.encode(), last=revision)
            except KeyExists:
                # Another writer came in between: read what it wrote, at once if what this
                # process remembered was what lost.
                self._known.forget(key)
                if known is None:
                    await asyncio.sleep(random.uniform(0, CAS_JITTER))
                continue
            self._known.put(key, revision, committed)
            cursors = await self.settle(event.job_id, revision, committed, own=True)
            return recorded.replace(cursor=cursors[pending.msg_id])
        raise StoreUnavailable(f"job {event.job_id} too contended to update")

    async def begin_submission(self, job_id: str, now: float) -> Job:
        """Mark the job's submission begun, by a compare-and-set of its envelope, unless it has
        begun or ended: the same commit point as an append's (step 4), so one of the two is
        ordered first and the later one sees it (see `Store.begin_submission`). The envelope's
        pending effects are settled first, as an append's are, and kept as they are."""
        key = token(job_id)
        for _ in range(CAS_ATTEMPTS):
            wire = self._wire()
            entry = await wire.kv_get(self._jobs, key)
            if entry is None:
                raise NotFound(f"job {job_id} not found")
            envelope = Envelope.decode(entry.value)
            if envelope.job.submit_begun_at or envelope.job.state.terminal:
                return envelope.job
            if self.unsettled(envelope):
                await self.settle(job_id, entry.revision, envelope)
                if envelope.enqueue:  # the envelope was written: read it again
                    continue
            job = envelope.job.replace(submit_begun_at=now)
            begun = Envelope(job=job, pending=envelope.pending, enqueue=False)
            self._known.forget(key)
            try:
                revision = await wire.kv_write(self._jobs, key, begun.encode(), last=entry.revision)
            except KeyExists:
                await asyncio.sleep(random.uniform(0, CAS_JITTER))
                continue
            self._known.put(key, revision, begun)
            return job
        raise StoreUnavailable(f"job {job_id} too contended to update")

    async def seen(self, msg_id: str) -> int | None:
        """The sequence the event with this message id was published at, if recorded."""
        entry = await self._wire().kv_get(self._seen, msg_id)
        return None if entry is None else int(entry.value or b"0")

    async def record_seen(self, msg_id: str, seq: int) -> None:
        with contextlib.suppress(KeyExists):
            await self._wire().kv_write(self._seen, msg_id, str(seq).encode(), last=0)

    def unsettled(self, envelope: Envelope) -> bool:
        """Whether the envelope may hold effects not published yet: an enqueue flag, or a pending
        event this process has not seen settled (published and recorded seen)."""
        return envelope.enqueue or any(p.msg_id not in self._settled for p in envelope.pending)

    async def settle(
        self, job_id: str, revision: int, envelope: Envelope, *, own: bool = False
    ) -> dict[str, str]:
        """Publish the envelope's pending effects in order (steps 5 and 6 of the module doc), and
        clear its enqueue flag once the outbox entry is published. `own`: this process just
        committed them, so nothing is published yet. Returns the cursor of each event it
        published or found published, by message id."""
        wire = self._wire()
        cursors: dict[str, str] = {}
        for pending in envelope.pending:
            if not own and pending.msg_id in self._settled:
                continue
            seq = None if own else await self.seen(pending.msg_id)
            if seq is None:
                event = pending.event
                subject = self._layout.event_subject(event.client, event.job_id)
                if not own:
                    # Exact for a pending event: its job's next commit waits until it is
                    # published, so once published it stays the last of its job.
                    seq = await wire.last_msg_id_seq(
                        self._layout.events_stream, subject, pending.msg_id
                    )
                if seq is None:
                    seq = await wire.publish(
                        subject, codec.dumps(codec.event_to_json(event)).encode(), pending.msg_id
                    )
                await self.record_seen(pending.msg_id, seq)
            self._settled.add(pending.msg_id)
            cursors[pending.msg_id] = str(seq)
        if envelope.enqueue:
            lane = self._layout.outbox_lane(envelope.job.client, envelope.job.priority)
            await wire.publish(lane, job_id.encode(), enqueue_msg_id(job_id))
            settled = Envelope(job=envelope.job, pending=[], enqueue=False)
            key = token(job_id)
            self._known.forget(key)
            with contextlib.suppress(KeyExists):
                revision = await wire.kv_write(self._jobs, key, settled.encode(), last=revision)
                self._known.put(key, revision, settled)
        return cursors
