"""An idempotency key left claimed by a create that failed part way (NATS away mid-create): the
caller's retry completes the create within a deadline shorter than the store's own timeout, not
after it (each retry waited out the timeout, was cancelled by the caller's deadline, and the
dispatch never got through)."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.store.nats import CLAIMER_GRACE, DEFAULT_TIMEOUT
from tests.support.builders import new_job, queued_event
from tests.support.nats_server import NatsEndpoint
from tests.support.nats_store import crash_once, new_store

CALLER_DEADLINE = DEFAULT_TIMEOUT * 0.6
"""Shorter than the store's timeout, as a caller's deadline can be."""


async def test_a_retry_completes_a_create_that_failed_after_claiming_its_key_within_the_deadline(
    nats_server: NatsEndpoint,
) -> None:
    store = new_store(nats_server.servers, timeout=DEFAULT_TIMEOUT)
    await store.open()
    try:
        first = new_job(key="order-1")
        crash_once(store.journal, "create", StoreUnavailable("NATS went away mid-create"))
        with pytest.raises(StoreUnavailable):
            await store.create_job(first, queued_event(first), enqueue=True)
        retry = new_job(key="order-1")

        stored, created = await asyncio.wait_for(
            store.create_job(retry, queued_event(retry), enqueue=True), CALLER_DEADLINE
        )

        assert created
        assert stored.job_id == first.job_id
        assert CLAIMER_GRACE < CALLER_DEADLINE
    finally:
        await store.close()
