"""The multi-replica store backend: NATS JetStream (streams, KV buckets, a work queue).

Layout, every name under one `prefix` (default "dgw"), created at open() when missing with the
configured number of replicas:

  stream <prefix>_events      subjects <prefix>.events.<client>.<job>; the event log. The cursor
                              is the stream sequence (decimal). Kept `event_max_age`.
  stream <prefix>_outbox      subject <prefix>.outbox; work-queue retention, one durable pull
                              consumer "worker" shared by every replica.
  KV <prefix>_jobs            job id → the job's envelope: the job, plus the effects of its last
                              write that may not be published yet (see below).
  KV <prefix>_jobs_by_client  <client>.<created_at>.<job> → "", for list_jobs.
  KV <prefix>_idempotency     sha256(client, key) → job id, create-only.
  KV <prefix>_seen            message id → stream sequence, create-only, TTL `dedupe_ttl` (72 h).
  KV <prefix>_rate            one key: the shared rate limit's sliding-window log, by CAS.
  KV <prefix>_secrets         name → 32 random bytes, create-only.

Streams and buckets missing at open() are created; existing ones are left as they are (change
their replicas with the nats CLI). open() returns once each of them answers a write (a probe the
stream refuses, as it expects another stream) and a read through this client's server: a new
replicated stream names its leader before that leader's interest in its subjects has reached
every server, and a publish made in between finds no responders. Jobs, their list index and
idempotency keys are kept `event_max_age` after their last write, like the events.

Client and job ids become subject tokens and KV keys through `_token`, which keeps [A-Za-z0-9-]
and writes every other byte as _XX, so any id is safe and distinct ids stay distinct.

Appending an event, and why in this order. NATS has no transaction across a KV bucket and a
stream, so the job's KV entry is the commit point and carries the rest as pending effects:

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
  6. Create seen[message id] = sequence (TTL 72 h).

The pending event stays in the envelope until the job's next write replaces it: clearing it
would cost every append one more write. Whether it is settled is known from `seen`, which step 6
writes only after step 5; the process that settled it remembers that (SETTLED_MEMORY ids) and
does not ask. A helping flush (3, 2, get_job) of an event not known settled: `seen` holds it →
done; else, if it is the last message on its job's subject, it was published (the job's next
commit waits for it, so nothing follows it there) → record it seen; else publish it, record it
seen. The enqueue flag of a create is cleared once its outbox entry is published, as a
republish after the duplicate window would queue the job again.

A crash before 4 leaves nothing. A crash after 4 leaves a committed job whose event any later
write to that job (3), a get_job, or a retry of the same append (2) publishes, once: a publish
is made only after the job's subject shows it is not there, and concurrent helpers are deduped
by JetStream's duplicate window on Nats-Msg-Id, set to DUPLICATE_WINDOW (2 h: it covers the
upstream's webhook retries at 5 s, 5 min and 30 min and the outbox's redelivery). Events without
a dedupe key get a random message id, fixed when committed, so a helping flush and the original
writer agree on it.

create_job commits the same way: claim the idempotency key (create-only; a loser waits briefly
for the winner's job and returns it, or, if the winner died before writing it, completes the
create under the winner's id), write the list index, then create the job's envelope with its
first event and the enqueue flag pending, then publish them (the outbox entry with Nats-Msg-Id
"enqueue.<job>"). A retry finds the job, flushes what is pending and returns it.

The outbox lease. The consumer's ack_wait is fixed (CLAIM_WAIT) and only covers the instant
between a pull and what follows it: every pulled message is at once nak'ed with a delay, which
sets that one message's redelivery deadline, so each call's visibility is honoured per message.
ack acks; retry_later naks with the delay. JetStream accepts an ack or a nak for any delivery of
a message, the one a later worker holds included, so the lease rule of the contract is kept here:
a lease remembers when its visibility runs out by the store's clock, and whether it was ended,
and an ack or retry on a lease that is not current is not sent. The server's deadline is set
`lease_grace` (by default the request timeout) after the lease's visibility: an ack or retry
sent while the lease was current reaches the server before the entry can be handed out again,
unless it is held up on the way for longer than that (its call would have failed as
unavailable). `attempts` is the message's deliveries before this one: a lease that ran out
counts, as a crashed worker may have submitted.

Reads (read_events, tail, list_jobs) use ephemeral pull consumers with ack none. read_events and
list_jobs are read-your-writes: they first ask the stream's leader for the sequence of its last
message on their subject, then pull (no_wait) until their consumer has delivered it, and delete
the consumer. The consumer sits on any replica of the stream, and one that lags behind the leader
would otherwise end the read short, losing events for its reader. A pull that nobody answers (a
consumer whose leader is moving, or so new that its interest has not reached this client's
server) is made again until `timeout`. tail long-polls and checks the consumer sequence and
heartbeats, starting over after its last event on any gap. (Not
nats-py's ordered consumer: its heartbeat and reset tasks outlive a reader that was cancelled, and
its resets fail silently while NATS is away.) A tail holds a subscription and a server-side
consumer between reads: close it (aclose) when done; one dropped without closing is removed by
the server after EPHEMERAL_IDLE.

The rate limit is a sliding-window log of acquisition times in one KV key, updated by
compare-and-set, stamped with each replica's wall clock (replicas are assumed NTP-synced).

The connection reconnects forever; while it is down, nothing is buffered (pending_size=0) and
every call raises StoreUnavailable at once or within `timeout`, so nothing a caller was told
failed is written later behind its back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import ssl
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from ..core.errors import FieldViolation, InvalidArgument, NotFound, StoreUnavailable
from ..core.model import JSON, Job, JobEvent, JobState, Lease, Mode, Service, UpstreamFailure
from ..core.ports import Apply, Clock

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "dgw"
DEFAULT_EVENT_MAX_AGE: Final = 30 * 24 * 3600.0
DEFAULT_DEDUPE_TTL: Final = 72 * 3600.0
DUPLICATE_WINDOW: Final = 2 * 3600.0
DEFAULT_TIMEOUT: Final = 5.0
"""Every request to NATS; beyond it the store is unavailable."""
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
RECONNECT_WAIT: Final = 0.5
CLAIM_WAIT: Final = 60.0
"""The outbox consumer's ack_wait: only between a pull and the nak that sets the visibility; an
entry pulled by a process that died at that instant comes back after it."""
SECRET_BYTES: Final = 32
READ_BATCH: Final = 256
TAIL_BATCH: Final = 256
TAIL_EXPIRES: Final = 30.0
"""How long one pull request of a tail waits at the server for new events."""
TAIL_HEARTBEAT: Final = 1.0
"""Idle heartbeat of a tail's pull request; three missed mean the tail is lost."""
EPHEMERAL_IDLE: Final = 60.0
"""A read consumer left behind by a dead process is removed by the server after this."""
OPEN_WAIT: Final = 30.0
"""Seconds open() keeps creating what is missing and waiting for every stream and bucket to
answer, on a cluster that is settling (new, or restarted): a replicated stream takes a round of
the cluster's consensus to create and then elects its leader, several seconds each on a busy
machine; calls made before that fail as unavailable."""
LEADER_POLL: Final = 0.05
CATCH_UP_POLL: Final = 0.01
"""Seconds between pulls of a read whose replica has not yet stored what the leader holds."""
CAS_ATTEMPTS: Final = 1000
CAS_JITTER: Final = 0.005
CLAIM_POLL: Final = 0.01
CLAIMER_GRACE: Final = 1.0
"""Seconds a create that found its idempotency key claimed waits for the claimer's job before
completing the create in its name. Short: a claimer that failed (NATS away mid-create) leaves the
key claimed, and each retry of the caller must complete within the caller's own deadline (a
5 s wait against a 5 s deadline was cancelled on every retry). Completing while the claimer is
only slow is safe: the job's create-only write lets one of them win."""
DUPLICATE_IN_PROCESS: Final = 10158
"""JetStream's error code when a clustered stream is still storing another publish with the
same Nats-Msg-Id (two replicas flushing the same pending event at once)."""
SETTLED_MEMORY: Final = 65536
"""Message ids of events this process knows settled (published, recorded seen), kept so that the
next write to their job need not check."""
RATE_KEY: Final = "upstream"
API_PREFIX: Final = "$JS.API"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ_HEADER: Final = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_STREAM_HEADER: Final = "Nats-Expected-Stream"
NO_STREAM: Final = "-"
"""A stream name none of ours has (they all hold '_'): a publish that expects it is refused by
the stream that gets it, which stores nothing (open()'s probe)."""
STREAM_MISMATCH: Final = 10060
"""JetStream's error code for a publish whose expected stream is another one."""
NO_SUITABLE_PEERS: Final = 10005
"""JetStream's error code for a stream it cannot place: on a settling cluster, a peer not yet
known to be up."""
KV_OPERATION_HEADER: Final = b"KV-Operation:"
WRONG_LAST_SEQUENCE: Final = (10071, 10164)
"""JetStream's error codes for a compare-and-set that found another revision."""
STATUS_HEADER: Final = "Status"
HEARTBEAT_STATUS: Final = "100"
NO_RESPONDERS_STATUS: Final = "503"
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9-]+$")
_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")

# Errors that mean NATS cannot be reached or did not answer in time, as opposed to a bug.
_UNREACHABLE: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    asyncio.TimeoutError,
    OSError,
)


_CREATE_CONFLICT: Final = (
    nats.js.errors.KeyWrongLastSequenceError,
    # nats-py's KV create reads the key after a conflict; on a clustered bucket the write it lost
    # to may still be in flight, and that read finds nothing.
    nats.js.errors.KeyNotFoundError,
)
"""What KeyValue.create raises when the key exists or is being created by another writer."""


class NatsStore:
    """The `Store` contract on NATS JetStream, shared by every replica (see the module doc)."""

    def __init__(
        self,
        servers: list[str] | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        replicas: int = 1,
        event_max_age: float = DEFAULT_EVENT_MAX_AGE,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        duplicate_window: float = DUPLICATE_WINDOW,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        lease_grace: float | None = None,
        clock: Clock = time.monotonic,
        ca_file: str | None = None,
        token: str | None = None,
    ) -> None:
        """`clock` decides when outbox leases run out; `lease_grace` (default: `timeout`) is how
        much later the server hands their entries out again (see the module doc)."""
        if not _PREFIX_RE.match(prefix):
            raise ValueError("prefix must be letters, digits and '-'")
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self._prefix = prefix
        self._replicas = replicas
        self._event_max_age = event_max_age
        self._dedupe_ttl = dedupe_ttl
        self._duplicate_window = min(duplicate_window, event_max_age)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._lease_grace = timeout if lease_grace is None else lease_grace
        self._clock = clock
        self._ca_file = ca_file
        self._token = token
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._settled = _Recent(SETTLED_MEMORY)

    # Names

    @property
    def events_stream(self) -> str:
        return f"{self._prefix}_events"

    @property
    def outbox_stream(self) -> str:
        return f"{self._prefix}_outbox"

    def bucket(self, name: str) -> str:
        """The KV bucket's full name: jobs, jobs_by_client, idempotency, seen, rate, secrets."""
        return f"{self._prefix}_{name}"

    @property
    def _events_subject(self) -> str:
        return f"{self._prefix}.events"

    @property
    def _outbox_subject(self) -> str:
        return f"{self._prefix}.outbox"

    # Lifecycle

    async def open(self) -> None:
        with self._unavailable():
            self._nc = await nats.connect(
                servers=self._servers,
                name="dispatcher-gateway",
                connect_timeout=self._connect_timeout,
                allow_reconnect=True,
                # -1 would retry the first connect forever too: open() must fail instead.
                max_reconnect_attempts=1,
                reconnect_time_wait=RECONNECT_WAIT,
                pending_size=0,
                tls=ssl.create_default_context(cafile=self._ca_file) if self._ca_file else None,
                token=self._token,
                error_cb=_log_error,
                disconnected_cb=_log_disconnected,
                reconnected_cb=_log_reconnected,
            )
            # Once connected, reconnect forever: the gateway recovers when NATS comes back.
            self._nc.options["max_reconnect_attempts"] = -1
            self._js = self._nc.jetstream(timeout=self._timeout)
            try:
                await self._provision()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._kv.clear()
        if nc is None or nc.is_closed:
            return
        if not nc.is_connected:
            # While reconnecting, nats-py (2.16) buffers protocol lines (subscribe, unsubscribe)
            # and its close() tries to write them to the dead socket, failing half-way through
            # and leaving the transport open. They have nowhere to go: drop them.
            nc._pending.clear()
            nc._pending_data_size = 0
        await nc.close()

    async def check(self) -> None:
        with self._unavailable():
            nc = self._client()
            if not nc.is_connected:
                raise StoreUnavailable("NATS is not connected")
            await self._jetstream().account_info()

    async def secret(self, name: str) -> bytes:
        with self._unavailable():
            kv = self._kv[self.bucket("secrets")]
            value, _ = await self._create_or_read(kv, _token(name), os.urandom(SECRET_BYTES))
            return value

    # Jobs

    async def create_job(
        self, job: Job, first_event: JobEvent, *, enqueue: bool
    ) -> tuple[Job, bool]:
        with self._unavailable():
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
            await self._kv[self.bucket("jobs_by_client")].put(_index_key(job), b"")
            envelope = _Envelope(
                job=job,
                pending=[_Pending(_random_msg_id(), first_event.replace(record_time=time.time()))],
                enqueue=enqueue,
            )
            jobs = self._kv[self.bucket("jobs")]
            try:
                revision = await jobs.create(_token(job.job_id), envelope.encode())
            except _CREATE_CONFLICT:
                existing = await self._wait_for_job(job.job_id, self._timeout)
                if existing is None:  # deleted in between: nothing of ours to complete
                    raise StoreUnavailable("the job vanished while it was being created") from None
                return existing, False
            await self._settle(job.job_id, revision, envelope, own=True)
            return job, True

    async def get_job(self, job_id: str) -> Job | None:
        with self._unavailable():
            return await self._load_job(job_id, settle=True)

    async def list_jobs(
        self, client: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = _decode_page_token(page_token) if page_token else None
        with self._unavailable():
            prefix = _token(client) + "."
            msgs = await self._read_consumer(
                f"KV_{self.bucket('jobs_by_client')}",
                filter_subject=f"$KV.{self.bucket('jobs_by_client')}.{prefix}>",
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                headers_only=True,
            )
            # $KV.<bucket>.<client>.<created>.<job>; a key written again (a retried create) is
            # delivered again once the consumer has caught up.
            entries = sorted(
                {_parse_index_key(msg.subject.split(".", 3)[3]) for msg in msgs}, reverse=True
            )
            if start is not None:
                entries = [e for e in entries if e < start]
            jobs: list[Job] = []
            while entries and len(jobs) <= limit:
                want = limit + 1 - len(jobs)
                chunk, entries = entries[:want], entries[want:]
                found = await asyncio.gather(*(self._load_job(job_id) for _, job_id in chunk))
                # An entry without its job, or naming another creation time, is left by a create
                # that died before its commit point (and was completed by a retry).
                jobs.extend(
                    j
                    for (created_at, _), j in zip(chunk, found, strict=True)
                    if j is not None and j.created_at == created_at
                )
            if len(jobs) <= limit:
                return jobs, ""
            jobs = jobs[:limit]
            return jobs, _encode_page_token(jobs[-1])

    # Outbox

    async def lease(self, *, limit: int, visibility: float) -> list[Lease]:
        with self._unavailable():
            msgs = await self._pull(
                self.outbox_stream, "worker", {"batch": limit, "no_wait": True}, limit
            )
            # Read before the naks are sent: the server's deadlines come after it.
            expires = self._clock() + visibility
            await asyncio.gather(
                *(self._nak(msg.reply, visibility + self._lease_grace) for msg in msgs)
            )
            return [
                Lease(
                    job_id=msg.data.decode(),
                    attempts=msg.metadata.num_delivered - 1,
                    handle=_OutboxHandle(msg.reply, expires),
                )
                for msg in msgs
            ]

    async def ack(self, lease: Lease) -> None:
        handle = _handle_of(lease)
        if not handle.current(self._clock()):
            return
        with self._unavailable():
            await self._client().request(handle.reply, b"+ACK", timeout=self._timeout)
        handle.ended = True

    async def retry_later(self, lease: Lease, delay: float) -> None:
        handle = _handle_of(lease)
        if not handle.current(self._clock()):
            return
        with self._unavailable():
            await self._nak(handle.reply, delay)
        handle.ended = True

    # Events

    async def append_event(
        self, event: JobEvent, *, dedupe_key: str | None, apply: Apply
    ) -> JobEvent | None:
        """See `Store.append_event` and the module doc. An empty `dedupe_key` is no key."""
        msg_id = _dedupe_msg_id(dedupe_key) if dedupe_key else None
        with self._unavailable():
            jobs = self.bucket("jobs")
            key = _token(event.job_id)
            for _ in range(CAS_ATTEMPTS):
                entry = await self._kv_get(jobs, key)
                if entry is None:
                    raise NotFound(f"job {event.job_id} not found")
                envelope = _Envelope.decode(entry.value)
                if msg_id is not None:
                    if any(p.msg_id == msg_id for p in envelope.pending):
                        await self._settle(event.job_id, entry.revision, envelope)
                        return None
                    # Only after the job's read: an event with this key that a later write to
                    # the job overwrote was recorded seen before that write.
                    if await self._seen(msg_id) is not None:
                        return None
                if self._unsettled(envelope):
                    await self._settle(event.job_id, entry.revision, envelope)
                    if envelope.enqueue:  # the envelope was written: read it again
                        continue
                now = time.time()
                job, recorded = apply(envelope.job, event.replace(record_time=now))
                recorded = recorded.replace(record_time=now, cursor="")
                pending = _Pending(msg_id or _random_msg_id(), recorded)
                committed = _Envelope(job=job, pending=[pending], enqueue=False)
                try:
                    revision = await self._kv_write(
                        jobs, key, committed.encode(), last=entry.revision
                    )
                except nats.js.errors.KeyWrongLastSequenceError:
                    await asyncio.sleep(random.uniform(0, CAS_JITTER))
                    continue
                cursors = await self._settle(event.job_id, revision, committed, own=True)
                return recorded.replace(cursor=cursors[pending.msg_id])
            raise StoreUnavailable(f"job {event.job_id} too contended to update")

    async def read_events(
        self, *, client: str, after: str = "", job_id: str = "", limit: int = 1000
    ) -> list[JobEvent]:
        seq = _parse_cursor(after)
        if limit < 1:
            return []
        job = _token(job_id) if job_id else ">"
        with self._unavailable():
            msgs = await self._read_consumer(
                self.events_stream,
                filter_subject=f"{self._events_subject}.{_token(client)}.{job}",
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=seq + 1,
                limit=limit,
            )
            return [_event_from_msg(msg) for msg in msgs]

    def tail(self, *, after: str) -> AsyncIterator[JobEvent]:
        return _Tail(self, _parse_cursor(after))

    async def last_cursor(self) -> str:
        with self._unavailable():
            info = await self._jetstream().stream_info(self.events_stream)
            last = info.state.last_seq
            return str(last) if last else ""

    # Rate limit

    async def acquire_rate(self, *, limit: int, window: float) -> float:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._unavailable():
            kv = self._kv[self.bucket("rate")]
            for _ in range(CAS_ATTEMPTS):
                entry = await _get(kv, RATE_KEY)
                now = time.time()
                taken = json.loads(entry.value or b"[]") if entry is not None else []
                taken = [t for t in taken if t > now - window]
                if len(taken) >= limit:
                    return float(min(taken) + window - now)
                taken.append(now)
                try:
                    await kv.update(
                        RATE_KEY, _dumps(taken), last=_revision(entry) if entry is not None else 0
                    )
                except nats.js.errors.KeyWrongLastSequenceError:
                    await asyncio.sleep(random.uniform(0, CAS_JITTER))
                    continue
                return 0.0
            raise StoreUnavailable("the rate limit is too contended to update")

    # Internals

    def _client(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            raise StoreUnavailable("the NATS store is not open")
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        self._client()
        assert self._js is not None
        return self._js

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except nats.js.errors.APIError as exc:
            # nats-py's KV errors are APIErrors that never set `code`.
            code = getattr(exc, "code", None)
            if code is not None and code >= 500:
                raise StoreUnavailable(f"NATS JetStream: {exc.description}") from exc
            raise
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"NATS JetStream unreachable: {type(exc).__name__}") from exc

    async def _provision(self) -> None:
        """Create what is missing, then wait until all of it answers. On a cluster that is
        settling, a step may time out, find nobody answering, or a peer not yet known to be up:
        the steps are tried again (each is idempotent) until OPEN_WAIT has passed."""
        deadline = time.monotonic() + OPEN_WAIT
        while True:
            try:
                await self._create_missing()
                await self._wait_until_answering(deadline)
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"NATS JetStream is not ready: {exc}") from exc
            except nats.js.errors.APIError as exc:
                settling = (exc.code or 0) >= 500 or exc.err_code == NO_SUITABLE_PEERS
                if not settling:
                    raise
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"NATS JetStream is not ready: {exc}") from exc
            await asyncio.sleep(LEADER_POLL)

    async def _create_missing(self) -> None:
        js = self._jetstream()
        await self._ensure_stream(
            api.StreamConfig(
                name=self.events_stream,
                subjects=[f"{self._events_subject}.>"],
                retention=api.RetentionPolicy.LIMITS,
                max_age=self._event_max_age,
                duplicate_window=self._duplicate_window,
                num_replicas=self._replicas,
                storage=api.StorageType.FILE,
            )
        )
        await self._ensure_stream(
            api.StreamConfig(
                name=self.outbox_stream,
                subjects=[self._outbox_subject],
                retention=api.RetentionPolicy.WORK_QUEUE,
                duplicate_window=self._duplicate_window,
                num_replicas=self._replicas,
                storage=api.StorageType.FILE,
            )
        )
        await js.add_consumer(
            self.outbox_stream,
            api.ConsumerConfig(
                durable_name="worker",
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=CLAIM_WAIT,
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        ttls: dict[str, float | None] = {
            "jobs": self._event_max_age,
            "jobs_by_client": self._event_max_age,
            "idempotency": self._event_max_age,
            "seen": self._dedupe_ttl,
            "rate": None,
            "secrets": None,
        }
        for name, ttl in ttls.items():
            bucket = self.bucket(name)
            try:
                self._kv[bucket] = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv[bucket] = await js.create_key_value(
                    api.KeyValueConfig(
                        bucket=bucket,
                        history=1,
                        ttl=ttl,
                        replicas=self._replicas,
                        storage=api.StorageType.FILE,
                    )
                )

    async def _wait_until_answering(self, deadline: float) -> None:
        """Wait until every stream and bucket answers a write and a read through this client's
        server (see the module doc), and the outbox consumer has a leader."""
        js = self._jetstream()
        probes = {
            self.events_stream: f"{self._events_subject}.{NO_STREAM}",
            self.outbox_stream: self._outbox_subject,
            **{f"KV_{bucket}": f"$KV.{bucket}.{NO_STREAM}" for bucket in self._kv},
        }
        for stream, subject in probes.items():
            while not await self._answers(stream, subject):
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"stream {stream} does not answer")
                await asyncio.sleep(LEADER_POLL)
        while True:
            info = await js.consumer_info(self.outbox_stream, "worker")
            if info.cluster is None or info.cluster.leader:
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"the consumer of {self.outbox_stream} has no leader")
            await asyncio.sleep(LEADER_POLL)

    async def _answers(self, stream: str, subject: str) -> bool:
        """Whether `stream` answers a publish on `subject` (refused: it expects another stream)
        and a read of the subject's last message."""
        not_yet = (
            nats.errors.NoRespondersError,
            nats.errors.TimeoutError,
            nats.js.errors.ServiceUnavailableError,
            nats.js.errors.ServerError,
        )
        try:
            await self._api(subject, b"", {EXPECTED_STREAM_HEADER: NO_STREAM})
        except not_yet:
            return False
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_MISMATCH:
                raise
        else:
            raise RuntimeError(f"stream {stream} stored a probe that expected another stream")
        try:
            await self._msg_get(stream, subject)
        except not_yet:
            return False
        return True

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        js = self._jetstream()
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)

    async def _claim_idempotency_key(self, job: Job) -> str:
        """The id of the job that owns (client, key): this one if the claim is ours."""
        kv = self._kv[self.bucket("idempotency")]
        key = hashlib.sha256(_dumps([job.client, job.idempotency_key])).hexdigest()
        owner, _ = await self._create_or_read(kv, key, job.job_id.encode())
        return owner.decode()

    async def _create_or_read(self, kv: KeyValue, key: str, value: bytes) -> tuple[bytes, bool]:
        """Create the key with `value` unless it exists: (the value it holds, whether created).
        A create that lost to one still in flight on a clustered bucket can find nothing when it
        reads at once: the read is repeated until the winner's value is there."""
        try:
            await kv.create(key, value)
            return value, True
        except _CREATE_CONFLICT:
            pass
        deadline = time.monotonic() + self._timeout
        while True:
            entry = await _get(kv, key)
            if entry is not None:
                return bytes(entry.value or b""), False
            if time.monotonic() > deadline:
                raise StoreUnavailable("a concurrent create of the same key did not complete")
            await asyncio.sleep(CLAIM_POLL)

    async def _wait_for_job(self, job_id: str, wait: float) -> Job | None:
        """The job a concurrent creator is writing; None if it does not appear within `wait`
        seconds (that creator died, or failed, between claiming the key and writing the job)."""
        deadline = time.monotonic() + min(wait, self._timeout)
        while True:
            job = await self._load_job(job_id, settle=True)
            if job is not None or time.monotonic() > deadline:
                return job
            await asyncio.sleep(CLAIM_POLL)

    async def _load_job(self, job_id: str, *, settle: bool = False) -> Job | None:
        entry = await self._kv_get(self.bucket("jobs"), _token(job_id))
        if entry is None:
            return None
        envelope = _Envelope.decode(entry.value)
        if settle and self._unsettled(envelope):
            await self._settle(job_id, entry.revision, envelope)
        return envelope.job

    async def _seen(self, msg_id: str) -> int | None:
        entry = await self._kv_get(self.bucket("seen"), msg_id)
        return None if entry is None else int(entry.value or b"0")

    async def _record_seen(self, msg_id: str, seq: int) -> None:
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self._kv_write(self.bucket("seen"), msg_id, str(seq).encode(), last=0)

    def _unsettled(self, envelope: _Envelope) -> bool:
        """Whether the envelope may hold effects not published yet: an enqueue flag, or a pending
        event this process has not seen settled (published and recorded seen)."""
        return envelope.enqueue or any(p.msg_id not in self._settled for p in envelope.pending)

    async def _settle(
        self, job_id: str, revision: int, envelope: _Envelope, *, own: bool = False
    ) -> dict[str, str]:
        """Publish the envelope's pending effects in order (steps 5 and 6 of the module doc), and
        clear its enqueue flag once the outbox entry is published. `own`: this process just
        committed them, so nothing is published yet. Returns the cursor of each event it
        published or found published, by message id."""
        self._jetstream()  # StoreUnavailable, not a KeyError below, once the store is closed
        cursors: dict[str, str] = {}
        for pending in envelope.pending:
            if not own and pending.msg_id in self._settled:
                continue
            seq = None if own else await self._seen(pending.msg_id)
            if seq is None:
                event = pending.event
                subject = f"{self._events_subject}.{_token(event.client)}.{_token(event.job_id)}"
                if not own:
                    seq = await self._last_seq(subject, pending.msg_id)
                if seq is None:
                    seq = await self._publish(
                        subject, _dumps(_event_to_json(event)), pending.msg_id
                    )
                await self._record_seen(pending.msg_id, seq)
            self._settled.add(pending.msg_id)
            cursors[pending.msg_id] = str(seq)
        if envelope.enqueue:
            await self._publish(self._outbox_subject, job_id.encode(), f"enqueue.{_token(job_id)}")
            settled = _Envelope(job=envelope.job, pending=[], enqueue=False)
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await self._kv_write(
                    self.bucket("jobs"), _token(job_id), settled.encode(), last=revision
                )
        return cursors

    async def _last_seq(self, subject: str, msg_id: str) -> int | None:
        """The sequence of the last event on `subject` (one job's events) if it is `msg_id`.
        Exact for a pending event: its job's next commit waits until it is published, so once
        published it stays the last of its job."""
        found = await self._msg_get(self.events_stream, subject)
        if found is None:
            return None
        _, seq, headers = found
        return seq if f"{MSG_ID_HEADER}: {msg_id}\r\n".encode() in headers else None

    # Requests without nats-py's JetStream and KV layers: one JSON decode per answer, no header
    # parsing, no dataclasses. The hot path makes five of them per event.

    async def _api(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        msg = await self._client().request(subject, payload, timeout=self._timeout, headers=headers)
        answer: dict[str, Any] = json.loads(msg.data)
        error = answer.get("error")
        if error is not None:
            nats.js.errors.APIError.from_error(error)  # raises
        return answer

    async def _msg_get(self, stream: str, subject: str) -> tuple[bytes, int, bytes] | None:
        """The last message on `subject`: (data, sequence, raw headers), None if there is none."""
        try:
            answer = await self._api(
                f"{API_PREFIX}.STREAM.MSG.GET.{stream}", _dumps({"last_by_subj": subject})
            )
        except nats.js.errors.NotFoundError:
            return None
        message = answer["message"]
        data = base64.b64decode(message.get("data") or b"")
        headers = base64.b64decode(message.get("hdrs") or b"")
        return data, int(message["seq"]), headers

    async def _kv_get(self, bucket: str, key: str) -> _Entry | None:
        found = await self._msg_get(f"KV_{bucket}", f"$KV.{bucket}.{key}")
        if found is None:
            return None
        data, seq, headers = found
        if KV_OPERATION_HEADER in headers:  # a delete or purge marker
            return None
        return _Entry(data, seq)

    async def _kv_write(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        """Compare-and-set: write `value` if the key's revision is `last` (0: if it has none).
        Raises KeyWrongLastSequenceError otherwise. Returns the new revision."""
        try:
            answer = await self._api(
                f"$KV.{bucket}.{key}", value, {EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(last)}
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise nats.js.errors.KeyWrongLastSequenceError(exc.description) from None
            raise
        return int(answer["seq"])

    async def _publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        """Publish with a message id; returns its sequence (the first one's, for a duplicate).
        While another writer's publish of the same id is being stored, a clustered stream answers
        "in process" rather than "duplicate": ask again until it gives that first publish's
        sequence."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                answer = await self._api(subject, payload, {MSG_ID_HEADER: msg_id})
                return int(answer["seq"])
            except nats.js.errors.APIError as exc:
                if exc.err_code != DUPLICATE_IN_PROCESS:
                    raise
                if time.monotonic() > deadline:
                    raise StoreUnavailable("a publish of the same event did not complete") from exc
            await asyncio.sleep(random.uniform(0, CAS_JITTER))

    async def _nak(self, reply: str, delay: float) -> None:
        payload = b"-NAK"
        if delay > 0:
            payload += b" " + _dumps({"delay": int(delay * 1e9)})
        # A request, not a publish: the server answers once the nak took effect.
        await self._client().request(reply, payload, timeout=self._timeout)

    async def _pull(
        self, stream: str, consumer: str, request: dict[str, Any], batch: int
    ) -> list[Msg]:
        """One pull request answered at once (no_wait): the messages there are, up to `batch`.
        While the consumer has no leader (it is moving to another node), or its leader's interest
        has not yet reached this client's server (a new consumer), nobody answers: the request is
        made again until `timeout`, then the store is unavailable."""
        nc = self._client()
        deadline = time.monotonic() + self._timeout
        sub = await nc.subscribe(nc.new_inbox())
        try:
            while True:
                msgs = await self._pull_once(sub, stream, consumer, request, batch)
                if msgs is not None:
                    return msgs
                if time.monotonic() > deadline:
                    raise nats.errors.NoRespondersError
                await asyncio.sleep(LEADER_POLL)
        finally:
            await sub.unsubscribe()

    async def _pull_once(
        self, sub: Subscription, stream: str, consumer: str, request: dict[str, Any], batch: int
    ) -> list[Msg] | None:
        """The messages one pull request gets; None when nobody answered it."""
        await self._client().publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", _dumps(request), reply=sub.subject
        )
        msgs: list[Msg] = []
        while len(msgs) < batch:
            msg = await sub.next_msg(timeout=self._timeout)
            status = _status(msg)
            if status == HEARTBEAT_STATUS:
                continue
            if status == NO_RESPONDERS_STATUS:
                return None
            if status is not None:
                break
            msgs.append(msg)
        return msgs

    async def _read_consumer(
        self,
        stream: str,
        *,
        filter_subject: str,
        deliver_policy: api.DeliverPolicy,
        opt_start_seq: int = 0,
        headers_only: bool | None = None,
        limit: int | None = None,
    ) -> list[Msg]:
        """What an ephemeral consumer sees, up to `limit` messages: at least every message on
        `filter_subject` that the stream's leader holds when the read starts. The consumer sits
        on any replica of the stream, and one that lags behind the leader sees less at first: it
        is read until it delivers the leader's last message on the subject (a replay that stops
        short loses events for its reader)."""
        last = await self._last_seq_on(stream, filter_subject)
        if last < opt_start_seq or last == 0:
            return []
        js = self._jetstream()
        info = await js.add_consumer(
            stream,
            api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=deliver_policy,
                opt_start_seq=opt_start_seq or None,
                filter_subject=filter_subject,
                headers_only=headers_only,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=EPHEMERAL_IDLE,
            ),
        )
        assert info.name is not None
        try:
            msgs: list[Msg] = []
            deadline = time.monotonic() + self._timeout
            while limit is None or len(msgs) < limit:
                if msgs and msgs[-1].metadata.sequence.stream >= last:
                    break
                want = READ_BATCH if limit is None else min(READ_BATCH, limit - len(msgs))
                got = await self._pull(stream, info.name, {"batch": want, "no_wait": True}, want)
                if not got:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(f"a replica of {stream} did not catch up")
                    await asyncio.sleep(CATCH_UP_POLL)
                msgs.extend(got)
            return msgs
        finally:
            with contextlib.suppress(*_UNREACHABLE, nats.js.errors.NotFoundError):
                await js.delete_consumer(stream, info.name)

    async def _last_seq_on(self, stream: str, subject: str) -> int:
        """The sequence of the stream's last message on `subject` (wildcards allowed), 0 when
        there is none; answered by the stream's leader, so it counts every acknowledged write."""
        found = await self._msg_get(stream, subject)
        return 0 if found is None else found[1]


class _Tail(AsyncIterator[JobEvent]):
    """Every event after a sequence, without end, through an ephemeral pull consumer with ack
    none. A gap in the consumer sequence, missed heartbeats, a reconnect or a pull nobody answers
    (the node holding the consumer stopped) start a new consumer after the last event delivered;
    if that fails, __anext__ raises StoreUnavailable (the caller reopens the tail from its last
    cursor). Holds no task: cancelling __anext__ leaves nothing."""

    def __init__(self, store: NatsStore, after: int) -> None:
        self._store = store
        self._seq = after
        self._buffer: deque[JobEvent] = deque()
        self._sub: Subscription | None = None
        self._consumer = ""
        self._delivered = 0
        self._outstanding = 0
        self._reconnects = -1
        self._unanswered = False

    async def __anext__(self) -> JobEvent:
        while not self._buffer:
            with self._store._unavailable():
                await self._fill()
        return self._buffer.popleft()

    async def aclose(self) -> None:
        await self._drop()

    async def _fill(self) -> None:
        nc = self._store._client()
        if self._sub is None or nc.stats["reconnects"] != self._reconnects:
            if self._unanswered:
                # Not at once: a new consumer's interest may take a moment to reach this server.
                self._unanswered = False
                await asyncio.sleep(LEADER_POLL)
            await self._restart()
        assert self._sub is not None
        if self._outstanding == 0:
            await self._request_more()
        try:
            msg = await self._sub.next_msg(timeout=TAIL_HEARTBEAT * 3)
        except nats.errors.TimeoutError:
            await self._restart()
            return
        while True:
            self._take(msg)
            if self._sub is None or self._sub.pending_msgs == 0:
                return
            msg = await self._sub.next_msg(timeout=TAIL_HEARTBEAT)

    def _take(self, msg: Msg) -> None:
        status = _status(msg)
        if status == HEARTBEAT_STATUS:
            return
        if status == NO_RESPONDERS_STATUS:
            # Nobody serves the consumer (asking again would spin): start over elsewhere.
            self._outstanding = 0
            self._unanswered = True
            self._sub_lost()
            return
        if status is not None:
            # The request ended (expired, or the server gave up on it): make another.
            self._outstanding = 0
            return
        self._outstanding -= 1
        meta = msg.metadata
        if meta.sequence.consumer != self._delivered + 1:
            # Something was lost in between; start over after what was delivered.
            self._sub_lost()
            return
        self._delivered = meta.sequence.consumer
        self._seq = meta.sequence.stream
        self._buffer.append(_event_from_msg(msg))

    def _sub_lost(self) -> None:
        self._reconnects = -1

    async def _request_more(self) -> None:
        assert self._sub is not None
        nc = self._store._client()
        request = {
            "batch": TAIL_BATCH,
            "expires": int(TAIL_EXPIRES * 1e9),
            "idle_heartbeat": int(TAIL_HEARTBEAT * 1e9),
        }
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self._store.events_stream}.{self._consumer}",
            _dumps(request),
            reply=self._sub.subject,
        )
        self._outstanding = TAIL_BATCH

    async def _restart(self) -> None:
        await self._drop()
        nc = self._store._client()
        js = self._store._jetstream()
        self._reconnects = nc.stats["reconnects"]
        info = await js.add_consumer(
            self._store.events_stream,
            api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._seq + 1,
                filter_subject=f"{self._store._events_subject}.>",
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=EPHEMERAL_IDLE,
            ),
        )
        assert info.name is not None
        self._consumer = info.name
        self._delivered = 0
        self._outstanding = 0
        self._sub = await nc.subscribe(nc.new_inbox())

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        consumer, self._consumer = self._consumer, ""
        nc = self._store._nc
        if sub is not None and nc is not None and not nc.is_closed:
            with contextlib.suppress(*_UNREACHABLE, nats.errors.BadSubscriptionError):
                await sub.unsubscribe()
        js = self._store._js
        if consumer and js is not None:
            with contextlib.suppress(*_UNREACHABLE, nats.js.errors.Error):
                await js.delete_consumer(self._store.events_stream, consumer)


@dataclass(eq=False, slots=True)
class _OutboxHandle:
    """One lease of one outbox entry: one delivery of its message."""

    reply: str
    """The delivery's ack subject."""
    expires: float
    """The store's clock when the lease's visibility runs out (the server's deadline is later by
    the lease grace)."""
    ended: bool = False
    """Acked or retried: the lease is over."""

    def current(self, now: float) -> bool:
        return not self.ended and now < self.expires


@dataclass(frozen=True, slots=True)
class _Entry:
    """A KV entry as the store reads it."""

    value: bytes
    revision: int


class _Recent:
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


@dataclass(frozen=True, slots=True)
class _Pending:
    msg_id: str
    event: JobEvent


@dataclass(slots=True)
class _Envelope:
    """What the jobs bucket holds for a job: the job, and its last write's unpublished effects."""

    job: Job
    pending: list[_Pending] = field(default_factory=list)
    enqueue: bool = False

    @property
    def unsettled(self) -> bool:
        return bool(self.pending) or self.enqueue

    def encode(self) -> bytes:
        return _dumps(
            {
                "job": _job_to_json(self.job),
                "pending": [
                    {"id": p.msg_id, "event": _event_to_json(p.event)} for p in self.pending
                ],
                "enqueue": self.enqueue,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> _Envelope:
        data = json.loads(raw or b"{}")
        return cls(
            job=_job_from_json(data["job"]),
            pending=[_Pending(p["id"], _event_from_json(p["event"])) for p in data["pending"]],
            enqueue=bool(data["enqueue"]),
        )


async def _get(kv: KeyValue, key: str) -> KeyValue.Entry | None:
    try:
        return await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None


def _revision(entry: KeyValue.Entry) -> int:
    if entry.revision is None:
        raise TypeError("a KV entry without a revision")
    return entry.revision


def _status(msg: Msg) -> str | None:
    headers = msg.headers
    if not headers:
        return None
    status = headers.get(STATUS_HEADER)
    return str(status) if status else None


def _handle_of(lease: Lease) -> _OutboxHandle:
    if not isinstance(lease.handle, _OutboxHandle):
        raise TypeError("the lease was not handed out by a NatsStore")
    return lease.handle


def _token(text: str) -> str:
    """`text` as one subject token / KV key part: [A-Za-z0-9-] kept, every other byte as _XX,
    '' as '_' (which no non-empty text gives)."""
    if not text:
        return "_"
    return "".join(
        char if char in _SAFE else "".join(f"_{byte:02X}" for byte in char.encode())
        for char in text
    )


def _untoken(part: str) -> str:
    if part == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "_":
            raw.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(part[i].encode())
            i += 1
    return raw.decode()


def _dedupe_msg_id(dedupe_key: str) -> str:
    return "k-" + hashlib.sha256(dedupe_key.encode()).hexdigest()


def _random_msg_id() -> str:
    return "u-" + uuid.uuid4().hex


def _index_key(job: Job) -> str:
    created = struct.pack(">d", job.created_at).hex()
    return f"{_token(job.client)}.{created}.{_token(job.job_id)}"


def _parse_index_key(key: str) -> tuple[float, str]:
    """(created_at, job_id) from the part of an index key after the client."""
    created, job = key.split(".", 1)
    return struct.unpack(">d", bytes.fromhex(created))[0], _untoken(job)


def _parse_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    if not cursor.isdecimal():
        raise InvalidArgument([FieldViolation("cursor", "is not a cursor this server issued")])
    return int(cursor)


def _encode_page_token(last: Job) -> str:
    return _dumps([last.created_at, last.job_id]).hex()


def _decode_page_token(token: str) -> tuple[float, str]:
    try:
        created_at, job_id = json.loads(bytes.fromhex(token))
        if isinstance(created_at, int | float) and isinstance(job_id, str):
            return float(created_at), job_id
    except (ValueError, TypeError):
        pass
    raise InvalidArgument([FieldViolation("page_token", "is not a token this server issued")])


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _job_to_json(job: Job) -> JSON:
    return {
        "job_id": job.job_id,
        "client": job.client,
        "services": [s.value for s in job.services],
        "mode": job.mode.value,
        "state": job.state.value,
        "body": job.body,
        "metadata": dict(job.metadata),
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "dispatch_id": job.dispatch_id,
        "result": job.result,
        "error": None if job.error is None else job.error.to_json(),
        "last_event": job.last_event,
    }


def _job_from_json(data: JSON) -> Job:
    return Job(
        job_id=data["job_id"],
        client=data["client"],
        services=tuple(Service(s) for s in data["services"]),
        mode=Mode(data["mode"]),
        state=JobState(data["state"]),
        body=data["body"],
        metadata=data["metadata"],
        idempotency_key=data["idempotency_key"],
        request_hash=data["request_hash"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        dispatch_id=data["dispatch_id"],
        result=data["result"],
        error=None if data["error"] is None else UpstreamFailure.from_json(data["error"]),
        last_event=data["last_event"],
    )


def _event_to_json(event: JobEvent) -> JSON:
    return {
        "job_id": event.job_id,
        "client": event.client,
        "service": event.service.value,
        "type": event.type,
        "state": event.state.value,
        "data": event.data,
        "metadata": dict(event.metadata),
        "event_time": event.event_time,
        "dispatch_id": event.dispatch_id,
        "terminal": event.terminal,
        "record_time": event.record_time,
    }


def _event_from_json(data: JSON, cursor: str = "") -> JobEvent:
    return JobEvent(
        job_id=data["job_id"],
        client=data["client"],
        service=Service(data["service"]),
        type=data["type"],
        state=JobState(data["state"]),
        data=data["data"],
        metadata=data["metadata"],
        event_time=data["event_time"],
        dispatch_id=data["dispatch_id"],
        terminal=data["terminal"],
        cursor=cursor,
        record_time=data["record_time"],
    )


def _event_from_msg(msg: Msg) -> JobEvent:
    return _event_from_json(json.loads(msg.data), str(msg.metadata.sequence.stream))


async def _log_error(exc: Exception) -> None:
    log.warning("NATS: %s: %s", type(exc).__name__, exc)


async def _log_disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _log_reconnected() -> None:
    log.info("NATS: reconnected")
