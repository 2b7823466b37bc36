"""A lease that comes right after this process queued an entry gets it, though JetStream counts a
message as pending on its consumers only after it has acknowledged the message's publish
(store/nats/lanes.py, COUNTING_LAG): a no_wait pull in between is answered as for an empty lane."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher_gateway.store.nats import NatsStore
from dispatcher_gateway.store.nats.jetstream import JetStream
from tests.support.builders import create, new_job, queued_event
from tests.support.nats_server import NatsEndpoint
from tests.support.nats_store import new_store

LONG = 30.0
"""A lease visibility no test waits out."""


async def test_a_lease_gets_an_entry_that_was_not_counted_when_it_first_asked(
    nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: NatsStore = new_store(nats_server.servers)
    await store.open()
    try:
        # The client's lane exists and is empty again.
        await create(store, "a", enqueue=True)
        [lease] = await store.lease(limit=1, visibility=LONG, client="a")
        await store.ack(lease)
        late = new_job("a")
        wire: JetStream = store.lanes.wire()
        pull = wire.pull

        async def answered_before_the_count(*args: Any) -> Any:
            # The server answered as for an empty lane; the entry is stored right after that
            # answer, as one whose count the server had not made when the pull came.
            msgs = await pull(*args)
            if not msgs and not (await store.get_job(late.job_id)):
                await store.create_job(late, queued_event(late), enqueue=True)
            return msgs

        monkeypatch.setattr(wire, "pull", answered_before_the_count)

        leases = await store.lease(limit=1, visibility=LONG, client="a")

        assert [lease.job_id for lease in leases] == [late.job_id]
    finally:
        await store.close()
