"""What only the NATS backend promises, beyond the contract suite: what it creates on the server,
how it fails while NATS is away and recovers by itself, and how a retry completes a write that a
crash cut short."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from unittest.mock import ANY

import nats
import pytest
from nats.js import api

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.core.model import JobEvent, JobState, Priority, QueueDepth
from dispatcher_gateway.core.schedule import ScheduleRules
from dispatcher_gateway.store import codec
from dispatcher_gateway.store.nats import DEFAULT_TIMEOUT, NatsStore
from dispatcher_gateway.store.nats.commit import Envelope, Pending
from dispatcher_gateway.store.nats.names import lane_consumer, token
from dispatcher_gateway.store.nats.tail import Tail
from tests.support.builders import (
    CLIENT,
    append,
    create,
    event_for,
    new_job,
    queued_event,
    tailing,
    take,
)
from tests.support.nats_server import NatsCluster, NatsEndpoint, NatsFactory
from tests.support.nats_store import FAST, RECOVERY, Crash, crash_once, new_store, until_answers

SHORT_LEASE = 0.1
LEASE_GRACE = 30.0
"""A lease grace no test waits out."""
PLACEMENTS = 20
"""Tails opened at most to get one whose consumer sits on a given kind of node (each lands on
one of three at random)."""


@pytest.fixture
async def store(nats_server: NatsEndpoint) -> AsyncIterator[NatsStore]:
    opened = new_store(nats_server.servers)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def stream_replicas(servers: list[str], names: list[str]) -> dict[str, int]:
    nc = await nats.connect(servers=servers)
    try:
        js = nc.jetstream()
        return {name: (await js.stream_info(name)).config.num_replicas or 1 for name in names}
    finally:
        await nc.close()


def every_stream(store: NatsStore) -> list[str]:
    buckets = ["jobs", "jobs_by_client", "idempotency", "seen", "rate", "secrets"]
    return [store.events_stream, store.outbox_stream] + [f"KV_{store.bucket(b)}" for b in buckets]


# What open() creates


async def test_open_creates_every_stream_and_bucket_with_one_replica(
    nats_server: NatsEndpoint, store: NatsStore
) -> None:
    replicas = await stream_replicas(nats_server.servers, every_stream(store))

    assert set(replicas.values()) == {1}


async def test_open_on_a_cluster_creates_them_with_three_replicas(
    start_nats_server: NatsFactory,
) -> None:
    cluster = start_nats_server(nodes=3)
    # Replicated streams take a round of the cluster's consensus to create: the default timeout.
    store = new_store(cluster.urls, replicas=3, timeout=DEFAULT_TIMEOUT)
    await store.open()
    try:
        replicas = await stream_replicas(cluster.urls, every_stream(store))
    finally:
        await store.close()

    assert set(replicas.values()) == {3}


async def test_open_fails_as_unavailable_when_no_server_answers(
    start_nats_server: NatsFactory,
) -> None:
    cluster = start_nats_server()
    cluster.stop()
    store = new_store(cluster.urls, connect_timeout=FAST)

    with pytest.raises(StoreUnavailable):
        await store.open()


# NATS away and back


async def single_node_store(start_nats_server: NatsFactory) -> tuple[NatsCluster, NatsStore]:
    cluster = start_nats_server()
    store = new_store(cluster.urls)
    await store.open()
    return cluster, store


async def test_every_call_is_unavailable_while_nats_is_stopped(
    start_nats_server: NatsFactory,
) -> None:
    cluster, store = await single_node_store(start_nats_server)
    try:
        job = await create(store)
        cluster.stop()

        with pytest.raises(StoreUnavailable):
            await store.check()
        with pytest.raises(StoreUnavailable):
            await store.get_job(job.job_id)
        with pytest.raises(StoreUnavailable):
            await append(store, job, dedupe_key="wh-1")
        with pytest.raises(StoreUnavailable):
            await store.lease(limit=1, visibility=1.0)
    finally:
        await store.close()


async def test_the_store_recovers_by_itself_when_nats_restarts_on_the_same_port(
    start_nats_server: NatsFactory,
) -> None:
    cluster, store = await single_node_store(start_nats_server)
    try:
        job = await create(store, key="order-1")
        cluster.stop()
        with pytest.raises(StoreUnavailable):
            await store.check()

        cluster.start()
        await until_answers(store.check)

        assert await store.get_job(job.job_id) == job
        recorded = await append(store, job, states.COMPLETED, dedupe_key="wh-1")
        assert (await store.read_events(client=CLIENT, job_id=job.job_id))[-1] == recorded
    finally:
        await store.close()


async def test_a_call_that_failed_while_nats_was_away_is_not_written_later(
    start_nats_server: NatsFactory,
) -> None:
    cluster, store = await single_node_store(start_nats_server)
    try:
        job = await create(store)
        cluster.stop()
        with pytest.raises(StoreUnavailable):
            await append(store, job)

        cluster.start()
        await until_answers(store.check)

        assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 1
        assert await store.get_job(job.job_id) == job
    finally:
        await store.close()


async def test_a_tail_fails_as_unavailable_while_nats_is_stopped(
    start_nats_server: NatsFactory,
) -> None:
    cluster, store = await single_node_store(start_nats_server)
    try:
        await create(store)
        async with tailing(store, "") as tail:
            await take(tail, 1)
            cluster.stop()
            with pytest.raises(StoreUnavailable):
                async with asyncio.timeout(RECOVERY):
                    await anext(tail)
    finally:
        await store.close()


def sockets_to(port: int) -> int:
    """How many sockets of this process are connected to loopback `port`, in any state (one a
    closed peer left half-open counts until the process closes it)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                ours.add(target.removeprefix("socket:[").removesuffix("]"))
    with open("/proc/self/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[2].split(":")[1], 16) == port and row[9] in ours)


async def until_disconnected(store: NatsStore) -> None:
    """Until the store's client knows NATS is gone (and reconnects)."""
    async with asyncio.timeout(RECOVERY):
        while True:
            try:
                await store.check()
            except StoreUnavailable as exc:
                if "not connected" in str(exc):
                    return
            await asyncio.sleep(0.01)


async def test_a_close_while_nats_is_stopped_ends_at_once_and_releases_the_socket(
    start_nats_server: NatsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, store = await single_node_store(start_nats_server)
    port = cluster.nodes[0].client_port
    job = await create(store)
    assert sockets_to(port) == 1
    async with tailing(store, "") as tail:
        await take(tail, 1)
        cluster.stop()
        await until_disconnected(store)
        # Calls that would subscribe or publish while the client reconnects.
        with pytest.raises(StoreUnavailable):
            await store.lease(limit=1, visibility=1.0)
        with pytest.raises(StoreUnavailable):
            await append(store, job)
        with pytest.raises(StoreUnavailable):
            await anext(tail)

        async with asyncio.timeout(FAST):
            await store.close()

    assert sockets_to(port) == 0
    with pytest.raises(StoreUnavailable):
        await store.check()
    # Nothing was queued for the dead socket (no subscription is made while reconnecting).
    assert not [r for r in caplog.records if "close:" in r.getMessage()]


async def test_a_cluster_store_keeps_working_with_one_node_stopped(
    start_nats_server: NatsFactory,
) -> None:
    cluster = start_nats_server(nodes=3)
    # Replicated streams take a round of the cluster's consensus to create: the default timeout.
    store = new_store(cluster.urls, replicas=3, timeout=DEFAULT_TIMEOUT)
    await store.open()
    try:
        job = await create(store, enqueue=True)
        cluster.nodes[0].stop()

        # Calls may fail while the streams elect new leaders, then answer again.
        await until_answers(lambda: append(store, job))
        await until_answers(store.check)

        assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 2
        assert [lease.job_id for lease in await store.lease(limit=10, visibility=30.0)] == [
            job.job_id
        ]
    finally:
        await store.close()


async def consumer_node(servers: list[str], store: NatsStore, tail: AsyncIterator[JobEvent]) -> str:
    """The node holding the tail's consumer (a replica of the events stream, picked at random)."""
    assert isinstance(tail, Tail)
    nc = await nats.connect(servers=servers)
    try:
        info = await nc.jetstream().consumer_info(store.events_stream, tail.consumer)
    finally:
        await nc.close()
    assert info.cluster is not None
    assert info.cluster.leader is not None
    return str(info.cluster.leader)


async def test_a_tail_goes_on_when_the_node_holding_its_consumer_stops(
    start_nats_server: NatsFactory,
) -> None:
    cluster = start_nats_server(nodes=3)
    connected = cluster.nodes[0]
    store = new_store([connected.url], replicas=3, timeout=DEFAULT_TIMEOUT)
    await store.open()
    try:
        job = await create(store)
        async with contextlib.AsyncExitStack() as tails:
            # Another node than the store's: stopping that one makes no reconnect, which would
            # start the tail over anyway. A third of the tails land on the store's node.
            for _ in range(PLACEMENTS):
                tail = await tails.enter_async_context(tailing(store, ""))
                await take(tail, 1)
                holder = await consumer_node(cluster.urls, store, tail)
                if holder != connected.name:
                    break
            next(node for node in cluster.nodes if node.name == holder).stop()
            await until_answers(lambda: append(store, job))
            await until_answers(store.check)

            [event] = await take(tail, 1)

        assert event.type == "letter_created"
    finally:
        await store.close()


# A crash part way, completed by a retry


async def test_a_retried_append_completes_one_that_crashed_after_its_commit(
    store: NatsStore,
) -> None:
    job = await create(store)
    crash_once(store.journal, "settle")
    with pytest.raises(Crash):
        await append(store, job, states.COMPLETED, dedupe_key="wh-1")

    again = await store.append_event(
        event_for(job, states.COMPLETED), dedupe_key="wh-1", apply=states.apply_event
    )

    assert again is None
    events = await store.read_events(client=CLIENT, job_id=job.job_id)
    assert [e.type for e in events] == [states.QUEUED, states.COMPLETED]


async def test_an_append_that_crashed_after_publishing_is_not_published_twice(
    store: NatsStore,
) -> None:
    job = await create(store)
    crash_once(store.journal, "record_seen")
    with pytest.raises(Crash):
        await append(store, job, states.COMPLETED, dedupe_key="wh-1")

    again = await store.append_event(
        event_for(job, states.COMPLETED), dedupe_key="wh-1", apply=states.apply_event
    )

    assert again is None
    assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 2


async def test_the_next_append_publishes_a_crashed_ones_event_first(store: NatsStore) -> None:
    job = await create(store)
    crash_once(store.journal, "settle")
    with pytest.raises(Crash):
        await append(store, job, "letter_created")

    later = await append(store, job, "letter_delivered")

    events = await store.read_events(client=CLIENT, job_id=job.job_id)
    assert [e.type for e in events] == [states.QUEUED, "letter_created", "letter_delivered"]
    assert events[-1] == later


async def test_get_job_publishes_what_a_crashed_append_left(store: NatsStore) -> None:
    job = await create(store)
    crash_once(store.journal, "settle")
    with pytest.raises(Crash):
        await append(store, job, states.COMPLETED)

    stored = await store.get_job(job.job_id)

    assert stored is not None
    assert stored.state.terminal
    assert [e.type for e in await store.read_events(client=CLIENT, job_id=job.job_id)] == [
        states.QUEUED,
        states.COMPLETED,
    ]


async def test_a_retried_create_completes_one_that_crashed_after_its_commit(
    store: NatsStore,
) -> None:
    first = new_job(key="order-1")
    crash_once(store.journal, "settle")
    with pytest.raises(Crash):
        await store.create_job(first, queued_event(first), enqueue=True)
    retry = new_job(key="order-1")

    stored, created = await store.create_job(retry, queued_event(retry), enqueue=True)

    assert (stored, created) == (first, False)
    assert len(await store.read_events(client=CLIENT, job_id=first.job_id)) == 1
    assert [lease.job_id for lease in await store.lease(limit=10, visibility=30.0)] == [
        first.job_id
    ]


async def test_a_create_whose_claimer_died_before_writing_the_job_is_completed_in_its_name(
    store: NatsStore,
) -> None:
    first = new_job(key="order-1")
    crash_once(store.journal, "create")
    with pytest.raises(Crash):
        await store.create_job(first, queued_event(first), enqueue=True)
    retry = new_job(key="order-1")

    stored, created = await store.create_job(retry, queued_event(retry), enqueue=True)

    assert created
    assert stored == retry.replace(job_id=first.job_id)
    assert await store.list_jobs(CLIENT, limit=10) == ([stored], "")
    assert len(await store.read_events(client=CLIENT, job_id=first.job_id)) == 1


# A write this process remembers, and another replica wrote after it

WINDOW = 1.0
"""The dedupe TTL and the duplicate window of the stores below: short enough to wait out."""


async def until_forgotten(store: NatsStore, msg_id: str) -> None:
    """Until the seen bucket has dropped the message id (its TTL) and the duplicate window on
    Nats-Msg-Id has passed: a long wait, in production terms (72 h and 2 h)."""
    await asyncio.sleep(WINDOW)
    async with asyncio.timeout(RECOVERY):
        while await store.journal.seen(msg_id) is not None:
            await asyncio.sleep(0.1)
    await asyncio.sleep(WINDOW)


async def envelope_of(store: NatsStore, job_id: str) -> Envelope:
    entry = await store._wire().kv_get(store.bucket("jobs"), token(job_id))
    assert entry is not None
    return Envelope.decode(entry.value)


@pytest.fixture
async def replicas(nats_server: NatsEndpoint) -> AsyncIterator[tuple[NatsStore, NatsStore]]:
    first = new_store(nats_server.servers, dedupe_ttl=WINDOW, duplicate_window=WINDOW)
    await first.open()
    second = NatsStore(nats_server.servers, prefix=first.layout.prefix, timeout=FAST)
    await second.open()
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


async def test_an_append_that_failed_to_publish_is_not_published_again_days_later(
    replicas: tuple[NatsStore, NatsStore],
) -> None:
    store, other = replicas
    job = await create(store)
    # NATS did not answer the publish: the event is committed, pending in the job's envelope.
    crash_once(store.journal, "settle", StoreUnavailable("NATS did not answer in time"))
    with pytest.raises(StoreUnavailable):
        await append(store, job, "letter_created")
    [pending] = (await envelope_of(store, job.job_id)).pending
    # Another replica's write publishes it first, then its own.
    await append(other, job, "letter_in_transit")
    await until_forgotten(store, pending.msg_id)

    await append(store, job, "letter_delivered")

    events = await other.read_events(client=CLIENT, job_id=job.job_id)
    assert [e.type for e in events] == [
        states.QUEUED,
        "letter_created",
        "letter_in_transit",
        "letter_delivered",
    ]


async def test_a_create_that_failed_to_publish_is_not_queued_again_hours_later(
    replicas: tuple[NatsStore, NatsStore],
) -> None:
    store, other = replicas
    first = new_job()
    # NATS did not answer the publish: the job is committed with its outbox entry pending.
    crash_once(store.journal, "settle", StoreUnavailable("NATS did not answer in time"))
    with pytest.raises(StoreUnavailable):
        await store.create_job(first, queued_event(first), enqueue=True)
    # Another replica reads the job, which queues it; its worker sends it and is done.
    assert await other.get_job(first.job_id) == first
    [lease] = await other.lease(limit=10, visibility=30.0)
    await append(other, first, states.SUBMITTED)
    await other.ack(lease)
    await asyncio.sleep(WINDOW * 2)

    await append(store, first, "letter_created")

    assert await other.lease(limit=10, visibility=30.0) == []


# The outbox lease


async def test_an_entry_whose_lease_ran_out_is_handed_out_again_only_after_the_lease_grace(
    nats_server: NatsEndpoint,
) -> None:
    store = new_store(nats_server.servers, lease_grace=LEASE_GRACE)
    await store.open()
    try:
        await create(store, enqueue=True)
        await store.lease(limit=10, visibility=SHORT_LEASE)

        await asyncio.sleep(SHORT_LEASE * 2)

        # An ack sent just before the lease ran out may still be on its way.
        assert await store.lease(limit=10, visibility=30.0) == []
    finally:
        await store.close()


async def test_an_outbox_made_before_lanes_gets_them_and_its_entries_are_leased(
    nats_server: NatsEndpoint,
) -> None:
    store = new_store(nats_server.servers)
    outbox, subject = store.outbox_stream, store.layout.outbox_subject
    nc = await nats.connect(servers=nats_server.servers)
    try:
        # As the release before lanes made it: one subject, one consumer of every subject.
        js = nc.jetstream()
        await js.add_stream(
            name=outbox, subjects=[subject], retention=api.RetentionPolicy.WORK_QUEUE
        )
        await js.add_consumer(
            outbox,
            api.ConsumerConfig(durable_name="worker", ack_policy=api.AckPolicy.EXPLICIT),
        )
        await js.publish(subject, b"job-from-before")
    finally:
        await nc.close()
    await store.open()
    try:
        queued = await create(store, "a", enqueue=True)

        assert await store.outbox_depths() == {
            "": {Priority.NORMAL: QueueDepth(fresh=1)},
            "a": {Priority.NORMAL: QueueDepth(fresh=1)},
        }
        leased = await store.lease(limit=10, visibility=30.0)
        assert {lease.job_id for lease in leased} == {"job-from-before", queued.job_id}
    finally:
        await store.close()


async def test_an_entry_put_back_until_the_schedule_horizon_waits_at_the_server_unsent(
    store: NatsStore, nats_server: NatsEndpoint
) -> None:
    # A scheduled job's entry: its nak's delay, as long as the gateway allows, is the server's
    # to keep; nothing is redelivered (nor polled for) while it waits.
    await create(store, enqueue=True)
    [lease] = await store.lease(limit=10, visibility=30.0)
    await store.retry_later(lease, ScheduleRules().horizon)
    consumer = lane_consumer(CLIENT, Priority.NORMAL)  # the consumer of the job's lane

    nc = await nats.connect(servers=nats_server.servers)
    try:
        js = nc.jetstream()
        before = await js.consumer_info(store.outbox_stream, consumer)
        for _ in range(3):
            await asyncio.sleep(0.5)
            assert await store.lease(limit=10, visibility=30.0) == []
        after = await js.consumer_info(store.outbox_stream, consumer)
    finally:
        await nc.close()
    assert (after.num_ack_pending, after.num_redelivered) == (1, before.num_redelivered)
    assert after.delivered.stream_seq == before.delivered.stream_seq


# What the jobs bucket holds


def test_an_envelope_is_the_job_its_pending_events_and_the_enqueue_flag_as_before() -> None:
    job = new_job(key="order-1")
    event = queued_event(job)
    envelope = Envelope(job=job, pending=[Pending("k-abc", event)], enqueue=True)

    stored = json.loads(envelope.encode())

    assert stored == {
        "job": codec.job_to_json(job),
        "pending": [{"id": "k-abc", "event": codec.event_to_json(event)}],
        "enqueue": True,
    }
    assert Envelope.decode(envelope.encode()) == envelope


# Ids of any shape


@pytest.mark.parametrize(
    ("client", "other"),
    [("a.b", "a_2Eb"), ("svc *", "svc >"), ("", "_"), ("équipe", "e\u0301quipe")],
)
async def test_clients_whose_ids_are_unsafe_in_subjects_stay_apart(
    store: NatsStore, client: str, other: str
) -> None:
    mine = await create(store, client)
    theirs = await create(store, other)
    await append(store, mine)

    events = await store.read_events(client=client)

    assert [(e.client, e.job_id) for e in events] == [(client, mine.job_id)] * 2
    assert [j.job_id for j in (await store.list_jobs(other, limit=10))[0]] == [theirs.job_id]


async def test_a_job_id_with_dots_and_wildcards_reads_back(store: NatsStore) -> None:
    job = await create(store, job_id="job.1.*.>")

    await append(store, job)

    assert await store.get_job("job.1.*.>") == job.replace(
        state=JobState.IN_PROGRESS, last_event="letter_created", updated_at=ANY
    )
    assert len(await store.read_events(client=CLIENT, job_id="job.1.*.>")) == 2
    assert await store.read_events(client=CLIENT, job_id="job.1.*") == []


async def test_the_queued_job_of_a_client_named_empty_is_leased(store: NatsStore) -> None:
    job = await create(store, "", enqueue=True)

    leased = await store.lease(limit=10, visibility=30.0)

    assert [lease.job_id for lease in leased] == [job.job_id]
