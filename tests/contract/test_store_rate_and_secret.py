"""The shared rate limit, named secrets, and readiness."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.core.ports import Store
from tests.support.builders import Backend, Elapse, StoreFactory, opened

WINDOW = 10.0
"""A window no test waits out."""


async def test_acquire_rate_admits_exactly_limit_in_a_window(store: Store) -> None:
    waits = [await store.acquire_rate(limit=3, window=WINDOW) for _ in range(5)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert all(0.0 < wait <= WINDOW for wait in waits[3:])


async def test_concurrent_acquires_admit_exactly_limit(store: Store) -> None:
    waits = await asyncio.gather(*(store.acquire_rate(limit=5, window=WINDOW) for _ in range(20)))

    assert waits.count(0.0) == 5
    assert all(wait > 0.0 for wait in waits if wait != 0.0)


async def test_a_slot_frees_after_the_returned_wait(
    store: Store, elapse: Elapse, backend: Backend
) -> None:
    window = 1.0
    await store.acquire_rate(limit=1, window=window)
    wait = await store.acquire_rate(limit=1, window=window)
    if backend.wall_clock_rate:
        # The real time between the two calls, at most: a window no machine takes that long for.
        assert 0.0 < wait <= window
    else:
        assert wait == window  # the clock stood still

    await elapse(wait)
    assert await store.acquire_rate(limit=1, window=window) == 0.0


async def test_a_secret_is_32_random_bytes_and_stays_the_same(store: Store) -> None:
    first = await store.secret("callback-token")

    assert len(first) == 32
    assert await store.secret("callback-token") == first
    assert await store.secret("another") != first


async def test_concurrent_first_asks_for_a_secret_agree(store: Store) -> None:
    keys = await asyncio.gather(*(store.secret("callback-token") for _ in range(10)))

    assert len(set(keys)) == 1


async def test_an_open_store_is_ready(store: Store) -> None:
    await store.check()


async def test_a_closed_store_is_not_ready(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        pass

    with pytest.raises(StoreUnavailable):
        await store.check()
