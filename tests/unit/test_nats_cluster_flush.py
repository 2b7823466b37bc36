"""Replicas on a three-node cluster flushing the same pending event at once: a clustered stream
answers the later publishes "duplicate message id is in process" while it stores the first; the
store asks again rather than failing the call (seen as webhooks answered 500 by the e2e replicas
test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.store.nats import NatsStore
from tests.contract.builders import CLIENT, append, create
from tests.support.nats_server import NatsFactory

from .test_nats_store import Crash, crash_once, new_store

REPLICAS = 3
READERS_PER_REPLICA = 3
JOBS = 3


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
            await store.open()
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
            crash_once(writer, "_settle")
            with pytest.raises(Crash):
                await append(writer, job, states.COMPLETED, dedupe_key=f"wh-{n}")

            # Every replica reads the job at once, and each one flushes the pending event.
            read = await asyncio.gather(
                *(s.get_job(job.job_id) for s in stores for _ in range(READERS_PER_REPLICA))
            )

            assert all(j is not None and j.state.terminal for j in read)
            events = await writer.read_events(client=CLIENT, job_id=job.job_id)
            assert [e.type for e in events] == [states.QUEUED, states.COMPLETED]
