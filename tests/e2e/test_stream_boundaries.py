"""A client's events reach its streams exactly once and in order at the edges of a gateway's life:
a stream that begins while the gateway is still starting."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway import app as app_module
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.core import states
from tests.support.loopback import GatewayFactory
from tests.support.requests import email_request

STREAM_TIMEOUT = 20.0


async def test_a_stream_begun_while_the_gateway_starts_misses_nothing(
    gateways: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC listens before the webhook listener starts (with GATEWAY_WORKERS, clients reach a
    # restarted worker as soon as its gRPC port is bound): a stream can begin, and an event be
    # recorded, before the gateway is done starting. Its start is held there meanwhile.
    paused, resume = asyncio.Event(), asyncio.Event()
    start_http = app_module.start_http
    calls = 0

    async def held(*args: Any, **options: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the admin listener starts first, before gRPC; then the webhook's
            paused.set()
            await resume.wait()
        return await start_http(*args, **options)

    monkeypatch.setattr(app_module, "start_http", held)
    app = GatewayApp(gateways.settings())
    starting = asyncio.create_task(app.start())
    try:
        await asyncio.wait_for(paused.wait(), STREAM_TIMEOUT)
        async with grpc.aio.insecure_channel(gateways.target) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            stream = stub.Subscribe(pb.SubscribeRequest())
            async with asyncio.timeout(STREAM_TIMEOUT):
                while app.hub.streams == 0:
                    await asyncio.sleep(0.01)
            early = await stub.Dispatch(email_request(), timeout=10)
            resume.set()
            await asyncio.wait_for(asyncio.shield(starting), STREAM_TIMEOUT)
            late = await stub.Dispatch(email_request(), timeout=10)
            seen: list[pb.JobEvent] = []
            async with asyncio.timeout(STREAM_TIMEOUT):
                async for event in stream:
                    seen.append(event)
                    if event.job_id == late.job.job_id:
                        break
            stream.cancel()
    finally:
        resume.set()
        await asyncio.wait([starting])
        if not starting.cancelled() and starting.exception() is None:
            gateways.running.append(app)
    stored = await app.store.read_events(client="anonymous")
    expected = [
        (e.cursor, e.job_id, e.type)
        for e in stored
        if e.type not in states.INFORMATIONAL and int(e.cursor) <= int(seen[-1].cursor)
    ]
    assert (early.job.job_id, "queued") in [(job, kind) for _, job, kind in expected]
    assert [(e.cursor, e.job_id, e.type) for e in seen] == expected
