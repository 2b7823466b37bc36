"""The store contract suite: every test here runs against every backend in BACKENDS, through the
`Store` protocol only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.store import SqliteStore
from dispatcher_gateway.store.nats import NatsStore
from tests.support.nats_server import NatsEndpoint

from .builders import Elapse, ManualClock, StoreFactory

NATS_LEASE_GRACE = 0.1
"""The NATS stores' lease grace here: short, as a test that lets a lease run out waits it out."""


@dataclass(frozen=True)
class Backend:
    factory: Callable[[pytest.FixtureRequest, ManualClock], StoreFactory]
    """Gives the test's store factory, its stores on the test's clock; it may ask the request
    for fixtures of its own (e.g. a session-wide server)."""
    server_lag: float | None = None
    """For a backend whose server hands out leased and retried entries by its own real-time
    timer: how long after the store's clock says so, at most. None: the store's clock alone
    decides."""


def sqlite_backend(request: pytest.FixtureRequest, clock: ManualClock) -> StoreFactory:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    path = tmp_path / "store" / "gateway.db"
    return lambda: SqliteStore(path, clock=clock)


def nats_backend(request: pytest.FixtureRequest, clock: ManualClock) -> StoreFactory:
    server: NatsEndpoint = request.getfixturevalue("nats_server")
    prefix = f"t{uuid.uuid4().hex[:12]}"  # the session's server is shared: names of its own
    return lambda: NatsStore(
        server.servers, prefix=prefix, clock=clock, lease_grace=NATS_LEASE_GRACE
    )


# A backend plugs in with one entry: its name, and how the suite makes its stores.
BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(sqlite_backend),
    "nats": Backend(nats_backend, server_lag=NATS_LEASE_GRACE),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def new_store(request: pytest.FixtureRequest, backend: Backend, clock: ManualClock) -> StoreFactory:
    return backend.factory(request, clock)


@pytest.fixture
def elapse(backend: Backend, clock: ManualClock) -> Elapse:
    async def elapse(seconds: float) -> None:
        clock.advance(seconds)
        if backend.server_lag is not None:
            await asyncio.sleep(seconds + backend.server_lag)

    return elapse


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    opened = new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
