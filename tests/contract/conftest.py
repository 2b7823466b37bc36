"""The store contract suite: every test in tests/contract/test_store_*.py runs against every
backend in BACKENDS, through the `Store` protocol only.

Where a store test lives:
- tests/contract/test_store_<topic>.py: the contract (core/ports.py's `Store`), on every backend
  (the `store` and `new_store` fixtures are parametrised over BACKENDS). A test here may use
  nothing but the protocol, the `clock`, `elapse` and what `Backend` declares.
- tests/contract/test_<backend>_<topic>.py: what one backend alone promises or does (its file,
  its server, its batching): test_sqlite_store.py, test_sqlite_tail.py, test_sqlite_engine.py,
  test_nats_store.py, test_nats_claims.py, test_nats_cluster_races.py; it makes the stores it
  needs itself.
- tests/support/builders.py: the jobs, events and helpers both kinds of test build with.
- tests/contract/test_codec.py: the codec every backend shares (store/codec.py).
Time: the outbox's and the rate limit's time passes with `elapse` (or `clock.advance`), and no
assertion depends on how long something took, so a slow machine cannot fail a test. (A short
sleep before appending gives a tail time to start waiting, so that the live path is the one
taken; the test holds either way.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.store import MemoryStore, SqliteStore
from dispatcher_gateway.store.nats import NatsStore
from tests.support.builders import Backend, Elapse, ManualClock, StoreFactory
from tests.support.nats_server import NatsEndpoint
from tests.support.sqlite_workers import SharedFile, worker_stores

NATS_LEASE_GRACE = 0.1
"""The NATS stores' lease grace here: short, as a test that lets a lease run out waits it out."""


def memory_backend(request: pytest.FixtureRequest, clock: ManualClock) -> StoreFactory:
    store = MemoryStore(clock=clock)  # closed and opened again, it keeps what it holds
    return lambda: store


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


def sqlite_workers_backend(request: pytest.FixtureRequest, clock: ManualClock) -> StoreFactory:
    """One file, two handles in turns (tests/support/sqlite_workers.py): GATEWAY_WORKERS=2."""
    tmp_path: Path = request.getfixturevalue("tmp_path")
    path = tmp_path / "store" / "gateway.db"
    return lambda: SharedFile(worker_stores(path, clock))


# A backend plugs in with one entry: its name, and how the suite makes its stores.
BACKENDS: dict[str, Backend] = {
    "memory": Backend(memory_backend),
    "sqlite": Backend(sqlite_backend),
    "sqlite-workers": Backend(sqlite_workers_backend),
    "nats": Backend(nats_backend, server_lag=NATS_LEASE_GRACE, wall_clock_rate=True),
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
        if backend.server_lag is not None or backend.wall_clock_rate:
            await asyncio.sleep(seconds + (backend.server_lag or 0.0))

    return elapse


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    opened = new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
