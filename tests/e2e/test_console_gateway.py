"""The console inside a real gateway (in process, against the sandbox): its live feed carries
every client's events as the hub publishes them, and a drain ends the pages' streams."""

from __future__ import annotations

import asyncio
import json

import httpx
from grpc import aio

from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.console.settings import ConsoleSettings
from tests.support.loopback import GatewayFactory
from tests.support.requests import email_request

WAIT = 20.0


async def test_the_feed_carries_a_jobs_events_and_a_drain_ends_it(
    gateways: GatewayFactory,
) -> None:
    app = await gateways.start(console=ConsoleSettings(addr="127.0.0.1:0", auth=False))
    assert app.listeners is not None
    assert app.listeners.console is not None
    url = app.listeners.console.url
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
        await client.get("/")  # the sandbox's session cookie
        async with client.stream("GET", "/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            async with aio.insecure_channel(gateways.target) as channel:
                job = (await pb_grpc.DispatchServiceStub(channel).Dispatch(email_request())).job
            seen: list[str] = []
            async with asyncio.timeout(WAIT):
                async for line in lines:
                    if line.startswith("data: "):
                        event = json.loads(line.removeprefix("data: "))
                        if event["job_id"] == job.job_id:
                            seen.append(event["type"])
                            if event["terminal"]:
                                break
            assert seen[0] == "queued"
            assert seen[-1] == "dispatch_completed"

            drain = asyncio.create_task(gateways.stop(app))
            async with asyncio.timeout(WAIT):
                rest = [line async for line in lines]
            await drain
    assert not [line for line in rest if line.startswith("data: ")]
