"""Replicas on a three-node cluster writing the same thing at once. A clustered stream or bucket
holds a write in flight before it stores it: a second publish of the same message id is answered
"in process", and a create that lost to it reads back nothing. The store waits for the first
write rather than failing the call (both seen as webhooks answered 500 by the e2e replicas
test). And one replica reading at once what another wrote: a read's consumer may sit on a replica
of the stream that lags behind its leader, and the read still ends at the leader's last event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.store.nats import NatsStore
from tests.support.builders import CLIENT, append, create, event_for, new_job, queued_event
from tests.support.nats_server import NatsFactory
from tests.support.nats_store import RECOVERY, Crash, crash_once, new_store, until_answers

REPLICAS = 3
READERS_PER_REPLICA = 3
JOBS = 5


async def open_until_it_answers(store: NatsStore) -> None:
    """Open a store on a new cluster, again while that fails as unavailable (a gateway would be
    restarted): creating replicated streams can outlast the timeout on a busy machine, and
    another node than the one that created them may not see them at once."""
    async with asyncio.timeout(RECOVERY):
        while True:
            try:
                await store.open()
                return
            except StoreUnavailable:
                await asyncio.sleep(0.2)


async def warm_up(store: NatsStore, name: str) -> None:
    """One write through the store's node to every stream and bucket the races use, retried
    while a new cluster settles (a node may answer "no responders" for a stream's subjects a
    little after the stream has its leader)."""
    job = new_job(key=name)
    event = event_for(job, states.COMPLETED)
    await until_answers(lambda: store.create_job(job, queued_event(job), enqueue=True))
    await until_answers(
        lambda: store.append_event(event, dedupe_key=name, apply=states.apply_event)
    )
    await until_answers(lambda: store.secret(name))


@contextlib.asynccontextmanager
async def one_store_per_node(start_nats_server: NatsFactory) -> AsyncIterator[list[NatsStore]]:
    cluster = start_nats_server(nodes=3)
    first = new_store(cluster.urls[:1], replicas=REPLICAS, timeout=5.0)
    # The others share the first one's names (its prefix), each through a node of its own.
    others = [
        NatsStore([url], prefix=first.events_stream.removesuffix("_events"), replicas=REPLICAS)
        for url in cluster.urls[1:]
    ]
    stores = [first, *others]
    try:
        for store in stores:
            await open_until_it_answers(store)
        for i, store in enumerate(stores):
            await warm_up(store, f"warm-up-{i}")
        yield stores
    finally:
        for store in stores:
            await store.close()


async def test_replicas_flushing_the_same_event_at_once_all_succeed_and_publish_it_once(
    start_nats_server: NatsFactory,
) -> None:
    async with one_store_per_node(start_nats_server) as stores:
        writer = stores[0]
        for n in range(JOBS):
            job = await create(writer)
            # The append commits, then its writer dies before publishing: the event is pending.
            crash_once(writer.journal, "settle")
            with pytest.raises(Crash):
                await append(writer, job, states.COMPLETED, dedupe_key=f"wh-{n}")

            # Every replica reads the job at once, and each one flushes the pending event.
            read = await asyncio.gather(
                *(s.get_job(job.job_id) for s in stores for _ in range(READERS_PER_REPLICA))
            )

            assert all(j is not None and j.state.terminal for j in read)
            events = await writer.read_events(client=CLIENT, job_id=job.job_id)
            assert [e.type for e in events] == [states.QUEUED, states.COMPLETED]


async def test_replicas_creating_with_the_same_idempotency_key_at_once_share_one_job(
    start_nats_server: NatsFactory,
) -> None:
    async with one_store_per_node(start_nats_server) as stores:
        for n in range(JOBS):
            jobs = [new_job(key=f"order-{n}") for _ in range(REPLICAS * READERS_PER_REPLICA)]

            created = await asyncio.gather(
                *(
                    stores[i % REPLICAS].create_job(job, queued_event(job), enqueue=True)
                    for i, job in enumerate(jobs)
                )
            )

            assert len({stored.job_id for stored, _ in created}) == 1
            assert sum(was_created for _, was_created in created) == 1


async def test_replicas_asking_for_a_new_secret_at_once_get_the_same_one(
    start_nats_server: NatsFactory,
) -> None:
    async with one_store_per_node(start_nats_server) as stores:
        for n in range(JOBS):
            secrets = await asyncio.gather(
                *(s.secret(f"key-{n}") for s in stores for _ in range(READERS_PER_REPLICA))
            )

            assert len(set(secrets)) == 1


async def test_what_one_replica_wrote_every_replica_reads_at_once(
    start_nats_server: NatsFactory,
) -> None:
    async with one_store_per_node(start_nats_server) as stores:
        writer = stores[0]
        for _ in range(JOBS):
            job = await create(writer)
            await append(writer, job, states.COMPLETED)

            # A read's consumer sits on any replica of the stream, lagging or not.
            read = await asyncio.gather(
                *(
                    s.read_events(client=CLIENT, job_id=job.job_id)
                    for s in stores
                    for _ in range(READERS_PER_REPLICA)
                )
            )
            listed = await asyncio.gather(*(s.list_jobs(CLIENT, limit=1) for s in stores))

            assert [len(events) for events in read] == [2] * len(read)
            assert [[j.job_id for j in jobs] for jobs, _ in listed] == [[job.job_id]] * len(stores)
