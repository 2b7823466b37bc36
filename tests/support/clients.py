"""gRPC clients as a well-behaved caller writes them, for runs where gateways and NATS come and
go: dispatches retried with their idempotency key, subscribers resuming from their last cursor on
another replica, gRPC health watched, /readyz polled."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
"""How a stream ends when the caller should resume it (drain, outage, maximum age, too slow)."""
RETRYABLE = (*RESUMABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""How a Dispatch ends when the caller should try again with the same idempotency key."""
RETRY_PAUSE = 0.2
DISPATCH_TIMEOUT = 5.0
POLL = 0.2


@dataclass
class Dispatcher:
    """Dispatches, round robin over the gateways' targets; each retried with its idempotency
    key, on the next target, until one answers OK."""

    targets: Sequence[str]
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Answers that were not OK, by status code name."""
    accepted_by: dict[str, str] = field(default_factory=dict)
    """Job id → the target whose answer was OK."""
    _turn: int = 0

    async def until_accepted(self, request: pb.DispatchRequest) -> str:
        assert request.idempotency_key, "retrying needs an idempotency key"
        while True:
            target = self.targets[self._turn % len(self.targets)]
            self._turn += 1
            try:
                job_id = await self.once(target, request)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.accepted_by[job_id] = target
            return job_id

    async def once(self, target: str, request: pb.DispatchRequest) -> str:
        """One Dispatch call; a refusal is counted, then raised."""
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.DispatchServiceStub(channel)
                response = await stub.Dispatch(request, timeout=DISPATCH_TIMEOUT)
                return str(response.job.job_id)
        except grpc.aio.AioRpcError as exc:
            self.refused[exc.code().name] += 1
            raise


@dataclass
class ChannelDispatcher:
    """Dispatches over one long-lived channel, as a service with a client object does; each
    retried with its idempotency key while refused UNAVAILABLE. gRPC reconnects the channel by
    itself (once its connection is closed or sent away, to wherever the balancer sends it)."""

    target: str
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Answers that were not OK, by status code name."""
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    """Refusals, by idempotency key."""
    channel: grpc.aio.Channel | None = None

    async def until_accepted(self, request: pb.DispatchRequest, timeout: float) -> str:
        assert request.idempotency_key, "retrying needs an idempotency key"
        if self.channel is None:
            # A connection of its own, as a separate client process has.
            self.channel = grpc.aio.insecure_channel(
                self.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
        stub = pb_grpc.DispatchServiceStub(self.channel)
        while True:
            try:
                response = await stub.Dispatch(request, timeout=timeout)
                return str(response.job.job_id)
            except grpc.aio.AioRpcError as exc:
                self.refused[exc.code().name] += 1
                self.refusals[request.idempotency_key] += 1
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            await asyncio.sleep(RETRY_PAUSE)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


@dataclass
class Subscriber:
    """Follows the client's events from the start. When its stream ends resumably (its gateway
    drained, died or lost its store), it resumes from its last cursor on the next target."""

    targets: Sequence[str]
    after: str = ""
    events: list[tuple[pb.JobEvent, str]] = field(default_factory=list)
    """Every event received, with the target that sent it."""
    terminal: collections.Counter[str] = field(default_factory=collections.Counter)
    """Terminal events received, by job id."""
    resumes: int = 0
    _turn: int = 0

    @property
    def cursors(self) -> list[int]:
        return [int(event.cursor) for event, _ in self.events]

    async def run(self) -> None:
        while True:
            target = self.targets[self._turn % len(self.targets)]
            try:
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = pb_grpc.DispatchServiceStub(channel)
                    async for event in stub.Subscribe(pb.SubscribeRequest(after_cursor=self.after)):
                        self.after = event.cursor
                        self.events.append((event, target))
                        if event.terminal:
                            self.terminal[event.job_id] += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RESUMABLE:
                    raise
            self.resumes += 1
            self._turn += 1
            await asyncio.sleep(RETRY_PAUSE)


@dataclass
class HealthLog:
    """A gateway's grpc.health.v1 status (overall, service "") over time, from a Watch stream
    kept open; and its /readyz status codes, polled (0: no answer)."""

    target: str
    admin_url: str
    statuses: list[tuple[float, str]] = field(default_factory=list)
    readyz: list[tuple[float, int]] = field(default_factory=list)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch())
            group.create_task(self._poll())

    def status_at(self, when: float) -> str:
        """The last status received at or before `when` (time.monotonic())."""
        before = [status for t, status in self.statuses if t <= when]
        return before[-1] if before else ""

    def readyz_between(self, start: float, end: float) -> list[int]:
        return [code for t, code in self.readyz if start <= t <= end]

    def statuses_between(self, start: float, end: float) -> list[str]:
        return [status for t, status in self.statuses if start <= t <= end]

    async def until(self, status: str, code: int, *, after: float) -> float:
        """Once health has said `status` and /readyz answered `code`, both after `after`
        (time.monotonic()): when the later of the two was first seen."""
        while True:
            said = [t for t, s in self.statuses if t >= after and s == status]
            answered = [t for t, c in self.readyz if t >= after and c == code]
            if said and answered:
                return max(said[0], answered[0])
            await asyncio.sleep(POLL)

    async def polled_after(self, when: float) -> None:
        """Until /readyz has been polled once after `when`."""
        while not self.readyz or self.readyz[-1][0] <= when:
            await asyncio.sleep(POLL)

    async def _watch(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            async for answer in health.Watch(request):
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                self.statuses.append((time.monotonic(), name))

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
            while True:
                code = 0
                with contextlib.suppress(httpx.TransportError):
                    code = (await client.get(f"{self.admin_url}/readyz")).status_code
                self.readyz.append((time.monotonic(), code))
                await asyncio.sleep(POLL)


async def cancel(*tasks: asyncio.Task[None]) -> None:
    """Cancel background clients and wait until they are gone (their channels closed)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def job_events_until(
    stub: pb_grpc.DispatchServiceStub, job_id: str, event_type: str, timeout: float
) -> list[pb.JobEvent]:
    """The job's events, from its first, up to and including the first of `event_type`; raises
    TimeoutError if it has not come within `timeout`, AssertionError if the stream ended first."""
    events: list[pb.JobEvent] = []

    async def until() -> list[pb.JobEvent]:
        async for event in stub.Subscribe(pb.SubscribeRequest(job_ids=[job_id])):
            events.append(event)
            if event.type == event_type:
                return events
        raise AssertionError(f"the stream ended before {event_type!r}: {events}")

    return await asyncio.wait_for(until(), timeout)
