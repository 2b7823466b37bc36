"""The store contract suite: every test here runs against every backend in BACKENDS, through the
`Store` protocol only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dispatcher_gateway.store import SqliteStore, Store
from dispatcher_gateway.store.nats import NatsStore
from tests.support.nats_server import NatsEndpoint

from .builders import StoreFactory


def sqlite_backend(request: pytest.FixtureRequest) -> StoreFactory:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    path = tmp_path / "store" / "gateway.db"
    return lambda: SqliteStore(path)


def nats_backend(request: pytest.FixtureRequest) -> StoreFactory:
    server: NatsEndpoint = request.getfixturevalue("nats_server")
    prefix = f"t{uuid.uuid4().hex[:12]}"  # the session's server is shared: names of its own
    return lambda: NatsStore(server.servers, prefix=prefix)


# A backend plugs in with one entry: its name, and a function of the test's request (through
# which it may ask for its own fixtures, e.g. a session-wide server) that gives its factory.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], StoreFactory]] = {
    "sqlite": sqlite_backend,
    "nats": nats_backend,
}


@pytest.fixture(params=list(BACKENDS))
def new_store(request: pytest.FixtureRequest) -> StoreFactory:
    return BACKENDS[request.param](request)


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    opened = new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
