"""Subscribe from a time (start_time): every event recorded at or after it, then live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from tests.support.faces import FACES, Face, Failed, face_on
from tests.support.loopback import GatewayFactory
from tests.support.requests import email_request

STREAM_TIMEOUT = 10.0
GAP = 0.1
"""Seconds between the events before the seek's time and it, and between it and those after."""


@pytest.fixture(params=FACES)
async def face(
    request: pytest.FixtureRequest, gateways: GatewayFactory, gateway: GatewayApp
) -> AsyncIterator[Face]:
    async with face_on(request.param, gateways) as opened:
        yield opened


async def ended(stub: pb_grpc.DispatchServiceStub, request: pb.DispatchRequest) -> str:
    """Dispatch, and wait for the job's terminal event; returns the job's id."""
    job = (await stub.Dispatch(request, timeout=STREAM_TIMEOUT)).job
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
            if event.terminal:
                break
    return job.job_id


async def test_subscribe_from_a_time_gets_exactly_the_events_recorded_since_then_live(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    before = await ended(stub, email_request())
    await asyncio.sleep(GAP)
    since = time.time()
    await asyncio.sleep(GAP)
    after = await ended(stub, email_request())

    request = pb.SubscribeRequest()
    request.start_time.FromNanoseconds(int(since * 1e9))
    stream = stub.Subscribe(request)
    got: list[pb.JobEvent] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for event in stream:
            got.append(event)
            if event.terminal:
                break
        live = (await stub.Dispatch(email_request(), timeout=STREAM_TIMEOUT)).job.job_id
        async for event in stream:
            got.append(event)
            if event.terminal:
                break
    stream.cancel()

    assert [(e.job_id, e.type) for e in got] == [
        (after, "queued"),
        (after, "dispatch_completed"),
        (live, "queued"),
        (live, "dispatch_completed"),
    ]
    assert before not in {e.job_id for e in got}
    assert all(e.record_time.ToNanoseconds() >= since * 1e9 for e in got)


@pytest.mark.parametrize(
    ("other", "named"),
    [({"after_cursor": "1"}, "after_cursor"), ({"live_only": True}, "live_only")],
    ids=["after_cursor", "live_only"],
)
async def test_a_start_time_with_a_cursor_or_live_only_is_invalid_argument(
    face: Face, other: dict[str, object], named: str
) -> None:
    request = pb.SubscribeRequest(**other)  # type: ignore[arg-type]
    request.start_time.FromSeconds(int(time.time()))
    with pytest.raises(Failed) as refused:
        await face.call("Subscribe", request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.violations() == ["start_time"]
    assert named in refused.value.message


@pytest.mark.parametrize("seconds", [-62_135_596_801, 253_402_300_800], ids=["year 0", "10000"])
async def test_a_start_time_beyond_the_years_1_to_9999_is_invalid_argument(
    stub: pb_grpc.DispatchServiceStub, seconds: int
) -> None:
    request = pb.SubscribeRequest()
    request.start_time.seconds = seconds
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Subscribe(request, timeout=STREAM_TIMEOUT):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_time" in (refused.value.details() or "")
