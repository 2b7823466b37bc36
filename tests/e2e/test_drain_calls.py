"""Calls that keep coming while a gateway process drains: every one is served or refused
UNAVAILABLE, never CANCELLED.

grpcio's own shutdown answers CANCELLED to every call that reaches it from its first instant,
those received but not yet taken up by a handler included (many, while the event loop is busy
with calls). A drain never shuts grpc down while a client is connected: it refuses new calls,
closes each client's connection once its calls are done, and stops grpc when none is left."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.process import STOP_TIMEOUT, ServerProcess, gateway_env, gateway_process
from tests.support.requests import email_request

CHANNELS = 2
CALLERS = 16
"""Callers sending back to back over the channels: enough that calls wait inside grpc."""
BEFORE = 40
"""Calls served before the SIGTERM."""
CALL_TIMEOUT = 10.0
RETRY_PAUSE = 0.01


@pytest.fixture
async def process(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    gateway = gateway_process(gateway_env(sandbox, tls, tmp_path), tmp_path / "gateway.log")
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.mark.slow
async def test_calls_arriving_during_the_drain_are_served_or_refused_unavailable(
    process: ServerProcess,
) -> None:
    target = process.env["GATEWAY_GRPC_ADDR"]
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    answers: collections.Counter[str] = collections.Counter()
    served = asyncio.Event()
    exited = asyncio.Event()
    numbers = itertools.count()

    async def caller(index: int) -> None:
        stub = pb_grpc.DispatchServiceStub(channels[index % CHANNELS])
        while not exited.is_set():
            request = email_request(idempotency_key=f"drain-calls-{next(numbers)}")
            try:
                await stub.Dispatch(request, timeout=CALL_TIMEOUT)
                answers["OK"] += 1
                if answers["OK"] >= BEFORE:
                    served.set()
            except grpc.aio.AioRpcError as exc:
                answers[exc.code().name] += 1
                await asyncio.sleep(RETRY_PAUSE)

    callers = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
    try:
        await asyncio.wait_for(served.wait(), STOP_TIMEOUT)
        during = answers.copy()
        assert await process.terminate() == 0, process.log()
        exited.set()
        await asyncio.gather(*callers)
    finally:
        exited.set()
        for task in callers:
            task.cancel()
        for channel in channels:
            await channel.close()
    print(f"\nanswers: before the SIGTERM {dict(during)}, in all {dict(answers)}")
    assert set(answers) <= {"OK", "UNAVAILABLE"}
    # Calls did reach the draining gateway (or its closed port) and were refused.
    assert answers["UNAVAILABLE"] > during["UNAVAILABLE"]
    assert "drained" in process.log()
