"""What open() creates on the server, and the wait until all of it answers.

Every name under the store's prefix (names.Layout), created when missing with the configured
number of replicas:

  stream <prefix>_events      subjects <prefix>.events.<client>.<job>; the event log. The cursor
                              is the stream sequence (decimal). Kept `event_max_age`.
  stream <prefix>_outbox      subjects <prefix>.outbox.<client>.<priority>, a lane each, and
                              <prefix>.outbox (the lane of entries queued before lanes were);
                              work-queue retention, one durable pull consumer per lane shared by
                              every replica ("worker" for <prefix>.outbox, the others made with
                              their lane's first entry: store.py).
  KV <prefix>_jobs            job id -> the job's envelope: the job, plus the effects of its last
                              write that may not be published yet (commit.py).
  KV <prefix>_jobs_by_client  <client>.<created_at>.<job> -> "", for list_jobs.
  KV <prefix>_idempotency     sha256(client, key) -> job id, create-only.
  KV <prefix>_seen            message id -> stream sequence, create-only, TTL `dedupe_ttl`.
  KV <prefix>_rate            one key: the shared rate limit's sliding-window log, by CAS.
  KV <prefix>_secrets         name -> 32 random bytes, create-only.

Existing streams and buckets are left as they are (change their replicas with the nats CLI).
open() returns once each of them answers a write (a probe the stream refuses, as it expects
another stream) and a read through this client's server: a new replicated stream names its
leader before that leader's interest in its subjects has reached every server, and a publish
made in between finds no responders. Jobs, their list index and idempotency keys are kept
`event_max_age` after their last write, like the events."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import api

from ...core.errors import StoreUnavailable
from .jetstream import EXPECTED_STREAM_HEADER, LEADER_POLL, JetStream
from .names import BUCKETS, NO_STREAM, OUTBOX_CONSUMER, Layout

CLAIM_WAIT: Final = 60.0
"""The outbox consumer's ack_wait: only between a pull and the nak that sets the visibility; an
entry pulled by a process that died at that instant comes back after it."""
OPEN_WAIT: Final = 30.0
"""Seconds open() keeps creating what is missing and waiting for every stream and bucket to
answer, on a cluster that is settling (new, or restarted): a replicated stream takes a round of
the cluster's consensus to create and then elects its leader, several seconds each on a busy
machine; calls made before that fail as unavailable."""
STREAM_MISMATCH: Final = 10060
"""JetStream's error code for a publish whose expected stream is another one."""
NO_SUITABLE_PEERS: Final = 10005
"""JetStream's error code for a stream it cannot place: on a settling cluster, a peer not yet
known to be up."""


@dataclass(frozen=True, slots=True)
class Shape:
    """How what open() creates is kept: replicas, and for how long."""

    replicas: int
    event_max_age: float
    dedupe_ttl: float
    duplicate_window: float


async def provision(js: JetStream, layout: Layout, shape: Shape) -> None:
    """Create what is missing, then wait until all of it answers. On a cluster that is
    settling, a step may time out, find nobody answering, or a peer not yet known to be up:
    the steps are tried again (each is idempotent) until OPEN_WAIT has passed."""
    deadline = time.monotonic() + OPEN_WAIT
    while True:
        try:
            await _create_missing(js, layout, shape)
            await _wait_until_answering(js, layout, deadline)
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


async def _create_missing(js: JetStream, layout: Layout, shape: Shape) -> None:
    await js.ensure_stream(
        api.StreamConfig(
            name=layout.events_stream,
            subjects=[f"{layout.events_subject}.>"],
            retention=api.RetentionPolicy.LIMITS,
            max_age=shape.event_max_age,
            duplicate_window=shape.duplicate_window,
            num_replicas=shape.replicas,
            storage=api.StorageType.FILE,
        )
    )
    lanes = [layout.outbox_subject, f"{layout.outbox_subject}.>"]
    await js.ensure_stream(
        api.StreamConfig(
            name=layout.outbox_stream,
            subjects=lanes,
            retention=api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=shape.duplicate_window,
            num_replicas=shape.replicas,
            storage=api.StorageType.FILE,
        )
    )
    # An outbox made before lanes has one subject, and a consumer of every subject.
    await js.add_subjects(layout.outbox_stream, lanes)
    await js.add_consumer(layout.outbox_stream, lane_consumer_config(OUTBOX_CONSUMER, lanes[0]))
    ttls: dict[str, float | None] = {
        "jobs": shape.event_max_age,
        "jobs_by_client": shape.event_max_age,
        "idempotency": shape.event_max_age,
        "seen": shape.dedupe_ttl,
        "rate": None,
        "secrets": None,
    }
    for name in BUCKETS:
        await js.ensure_bucket(
            api.KeyValueConfig(
                bucket=layout.bucket(name),
                history=1,
                ttl=ttls[name],
                replicas=shape.replicas,
                storage=api.StorageType.FILE,
            )
        )


def lane_consumer_config(name: str, subject: str) -> api.ConsumerConfig:
    """The durable consumer of one lane of the outbox: its entries, in the order queued."""
    return api.ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=CLAIM_WAIT,
        max_deliver=-1,
        max_ack_pending=-1,
    )


async def _wait_until_answering(js: JetStream, layout: Layout, deadline: float) -> None:
    """Wait until every stream and bucket answers a write and a read through this client's
    server (see the module doc), and the outbox consumer has a leader."""
    probes = {
        layout.events_stream: f"{layout.events_subject}.{NO_STREAM}",
        layout.outbox_stream: layout.outbox_subject,
        **{
            f"KV_{layout.bucket(name)}": f"$KV.{layout.bucket(name)}.{NO_STREAM}"
            for name in BUCKETS
        },
    }
    for stream, subject in probes.items():
        while not await _answers(js, stream, subject):
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"stream {stream} does not answer")
            await asyncio.sleep(LEADER_POLL)
    while not await js.consumer_has_leader(layout.outbox_stream, OUTBOX_CONSUMER):
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"the consumer of {layout.outbox_stream} has no leader")
        await asyncio.sleep(LEADER_POLL)


async def _answers(js: JetStream, stream: str, subject: str) -> bool:
    """Whether `stream` answers a publish on `subject` (refused: it expects another stream)
    and a read of the subject's last message."""
    not_yet = (
        nats.errors.NoRespondersError,
        nats.errors.TimeoutError,
        nats.js.errors.ServiceUnavailableError,
        nats.js.errors.ServerError,
    )
    try:
        await js.request(subject, b"", {EXPECTED_STREAM_HEADER: NO_STREAM})
    except not_yet:
        return False
    except nats.js.errors.APIError as exc:
        if exc.err_code != STREAM_MISMATCH:
            raise
    else:
        raise RuntimeError(f"stream {stream} stored a probe that expected another stream")
    try:
        await js.msg_get(stream, subject)
    except not_yet:
        return False
    return True
