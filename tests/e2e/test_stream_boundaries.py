"""A client's events reach its streams exactly once and in order at the edges of a gateway's life
and of a stream's: a stream that begins while the gateway is still starting; one that reaches its
maximum age while its reader is behind."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.core import states
from dispatcher_gateway.httpserver import start_http
from tests.support.builders import event_for, new_job, queued_event
from tests.support.faces import JsonFace, SseEvent, face_on, sse_events
from tests.support.loopback import GatewayFactory
from tests.support.requests import email_request

STREAM_TIMEOUT = 20.0
JSON_HEADERS = {"content-type": "application/json"}
RESUME_HINT = re.compile(r"after_cursor='(\d+)'")


async def test_a_stream_begun_while_the_gateway_starts_misses_nothing(
    gateways: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC listens before the webhook listener starts (with GATEWAY_WORKERS, clients reach a
    # restarted worker as soon as its gRPC port is bound): a stream can begin, and an event be
    # recorded, before the gateway is done starting. Its start is held there meanwhile.
    paused, resume = asyncio.Event(), asyncio.Event()
    calls = 0

    async def held(*args: Any, **options: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the admin listener starts first, before gRPC; then the webhook's
            paused.set()
            await resume.wait()
        return await start_http(*args, **options)

    monkeypatch.setattr("dispatcher_gateway.app.start_http", held)
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


async def large_history(app: GatewayApp) -> int:
    """More events than gRPC's flow-control windows and the sockets' buffers hold; how many."""
    job = new_job("anonymous")
    await app.store.create_job(job, queued_event(job), enqueue=False)
    blob = "x" * 12_000
    events = [(event_for(job, f"progress_{i}", data={"blob": blob}), None) for i in range(2000)]
    for start in range(0, len(events), 100):
        await app.store.append_events(events[start : start + 100], apply=states.apply_event)
    return len(events) + 1


async def read_all(stream: grpc.aio.UnaryStreamCall[Any, Any], into: list[pb.JobEvent]) -> None:
    async with asyncio.timeout(STREAM_TIMEOUT):
        while (event := await stream.read()) is not grpc.aio.EOF:
            assert isinstance(event, pb.JobEvent)
            into.append(event)


async def test_a_stream_whose_reader_is_behind_at_its_maximum_age_ends_resumable(
    gateways: GatewayFactory,
) -> None:
    # More history than gRPC's flow-control windows hold: the server's sends wait for a reader
    # that paused, and the stream reaches its maximum age meanwhile. It ends as any stream at
    # that age (UNAVAILABLE, where to resume), not stuck with neither event nor status.
    app = await gateways.start(max_stream_age=1.0)
    events = await large_history(app)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        stream = stub.Subscribe(pb.SubscribeRequest())
        first = await stream.read()
        assert isinstance(first, pb.JobEvent)
        seen = [first]
        await asyncio.sleep(2.0)  # past the stream's maximum age, its sends waiting for us
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read_all(stream, seen)
    assert len(seen) < events
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "maximum age" in (info.value.details() or "")
    hint = RESUME_HINT.search(info.value.details() or "")
    assert hint is not None
    assert hint.group(1) == seen[-1].cursor
    assert app.hub.streams == 0


async def test_a_json_stream_whose_reader_is_behind_at_its_maximum_age_ends_resumable(
    gateways: GatewayFactory,
) -> None:
    # As above, on the JSON face: the stream ends with its status event, not heartbeats for ever.
    app = await gateways.start(max_stream_age=1.0)
    events = await large_history(app)
    seen: list[SseEvent] = []
    async with face_on("json", gateways) as face:
        assert isinstance(face, JsonFace)
        url, body = face.url("Subscribe"), b"{}"
        async with face.client.stream("POST", url, content=body, headers=JSON_HEADERS) as response:
            items = sse_events(response)
            seen.append(await anext(items))
            await asyncio.sleep(2.0)  # past the stream's maximum age, its sends waiting for us
            async with asyncio.timeout(STREAM_TIMEOUT):
                async for item in items:
                    seen.append(item)
                    if item.event == "status":
                        break
    status = json.loads(seen[-1].data)
    assert seen[-1].event == "status"
    assert len(seen) - 1 < events
    assert status["status"] == "UNAVAILABLE"
    assert "maximum age" in status["message"]
    hint = RESUME_HINT.search(status["message"])
    assert hint is not None
    assert hint.group(1) == seen[-2].id
    assert app.hub.streams == 0
