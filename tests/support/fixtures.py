"""The end-to-end fixtures, shared by tests/e2e and tests/fuzz (whose conftest.py files name
them): the test CA, the sandbox, in-process gateways and a stub on one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp

from .loopback import GatewayFactory, RunningSandbox, TlsFiles, issue_tls, start_sandbox


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return issue_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sandbox_options() -> dict[str, object]:
    """Override with @pytest.mark.parametrize("sandbox_options", [{...}]) for one test."""
    return {}


@pytest.fixture
async def sandbox(
    tls: TlsFiles, sandbox_options: dict[str, object]
) -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox(tls, **sandbox_options)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def gateways(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(sandbox, tls, tmp_path / "gateway.db")
    try:
        yield factory
    finally:
        await factory.stop_all()


@pytest.fixture
async def gateway(gateways: GatewayFactory) -> GatewayApp:
    return await gateways.start()


@pytest.fixture
async def stub(
    gateways: GatewayFactory, gateway: GatewayApp
) -> AsyncIterator[pb_grpc.DispatchServiceStub]:
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        yield pb_grpc.DispatchServiceStub(channel)
