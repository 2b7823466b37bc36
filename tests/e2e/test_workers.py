"""GATEWAY_WORKERS=2: one gateway of two processes on the same ports and store, under a parent
that serves the admin port, restarts a worker that dies and drains both on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory
from tests.support.process import START_TIMEOUT, ServerProcess, gateway_env, gateway_process
from tests.support.requests import email_request

WORKERS = 2
MAX_CHANNELS = 64
"""Connections opened, each with a stream, until both workers hold one (the kernel picks the
worker of each by a hash: 64 all on one would be a 1 in 2**63 chance)."""
# Its own connection per channel: grpc otherwise shares one between channels to one target.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest) -> str:
    """The gateway's store: SQLite unless a test asks for NATS too (a server of its own)."""
    if request.param == "nats":
        factory: NatsFactory = request.getfixturevalue("start_nats_server")
        return factory().url
    return str(request.getfixturevalue("tmp_path") / "gateway.db")


@pytest.fixture
async def process(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, store: str
) -> AsyncIterator[ServerProcess]:
    env = gateway_env(sandbox, tls, tmp_path) | {
        "GATEWAY_WORKERS": str(WORKERS),
        "GATEWAY_STORE": store,
    }
    gateway = gateway_process(env, tmp_path / "gateway.log")
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


async def readyz(process: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        body: dict[str, Any] = (await client.get(process.readyz)).json()
    return body


def workers_of(process: ServerProcess) -> list[int]:
    text = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    return [int(pid) for pid in text.split()]


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


async def test_the_admin_port_answers_for_every_worker(process: ServerProcess) -> None:
    body = await readyz(process)
    assert body["ready"] is True
    assert [w["worker"] for w in body["workers"]] == list(range(WORKERS))
    assert all(w["ready"] and w["store"] == "ok" for w in body["workers"])
    async with httpx.AsyncClient() as client:
        page = (await client.get(process.readyz.replace("/readyz", "/metrics"))).text
    for index in range(WORKERS):
        assert f'dispatcher_gateway_store_up{{worker="{index}"}} 1.0' in page
    assert len(workers_of(process)) == WORKERS


# On SQLite by the workers' datagrams (store/sqlite/wake.py); on NATS each worker follows the
# event stream.
@pytest.mark.parametrize("store", ["sqlite", "nats"], indirect=True)
async def test_an_event_reaches_the_streams_of_every_worker(process: ServerProcess) -> None:
    target = process.env["GATEWAY_GRPC_ADDR"]
    async with contextlib.AsyncExitStack() as stack:
        streams: list[Any] = []
        for _ in range(MAX_CHANNELS):
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
            )
            stream = pb_grpc.DispatchServiceStub(channel).Subscribe(
                pb.SubscribeRequest(live_only=True)
            )
            streams.append(stream)
            async with asyncio.timeout(START_TIMEOUT):
                while (body := await readyz(process))["streams"] < len(streams):
                    await asyncio.sleep(0.05)
            if all(w["streams"] for w in body["workers"]):
                break
        assert all(w["streams"] for w in body["workers"])

        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            job = (await stub.Dispatch(email_request())).job.job_id

        # Recorded by one worker (the Dispatch, then the outbox's answer), read by both.
        async with asyncio.timeout(START_TIMEOUT):
            for stream in streams:
                types = []
                while "dispatch_completed" not in types:
                    event = await stream.read()
                    assert event.job_id == job
                    types.append(event.type)
                assert types == ["queued", "dispatch_completed"]
        for stream in streams:
            stream.cancel()


async def test_a_worker_that_dies_is_started_again(process: ServerProcess) -> None:
    first, second = workers_of(process)
    os.kill(second, signal.SIGKILL)
    async with asyncio.timeout(START_TIMEOUT):
        while not (body := await readyz(process))["ready"] or len(workers_of(process)) < WORKERS:
            await asyncio.sleep(0.1)
    assert [w["restarts"] for w in body["workers"]] == [0, 1]
    assert first in workers_of(process)
    assert second not in workers_of(process)
    assert "exited -9" in process.log()


async def test_sigterm_drains_every_worker_and_the_parent_exits_0(process: ServerProcess) -> None:
    workers = workers_of(process)
    assert await process.terminate() == 0
    # The whole log: log() is its tail, which the start-up lines of two workers may outgrow.
    assert process.log_path.read_text().count("drained in") == WORKERS
    assert not any(alive(pid) for pid in workers)


async def test_sigkill_of_the_parent_takes_its_workers(process: ServerProcess) -> None:
    workers = workers_of(process)
    await process.kill()
    async with asyncio.timeout(START_TIMEOUT):
        while any(alive(pid) for pid in workers):
            await asyncio.sleep(0.05)
