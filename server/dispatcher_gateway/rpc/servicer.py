"""The DispatchService servicer: translates calls to core use cases and errors to statuses."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

from ..core.errors import GatewayError, ShuttingDown, SlowConsumer, UpstreamError
from ..core.gateway import Gateway
from ..core.model import JobEvent, JobState
from .auth import authorize, caller
from .convert import (
    attempt_to_pb,
    check_job_id,
    check_page_token,
    dict_to_struct,
    event_to_pb,
    failure_to_pb,
    fill_job,
    filter_from_request,
    job_to_pb,
    spec_from_request,
    template_to_pb,
)
from .errors import to_status
from .limits import ClientLimits

log = logging.getLogger("dispatcher_gateway.rpc")

MAX_STREAM_AGE = 30 * 60.0
STREAM_AGE_JITTER = 0.1
"""Streams end between (1 - jitter) and 1 times the maximum age, so that they do not all
reconnect at once."""

PB_CACHE_SIZE = 64
"""Live events whose protobuf form is kept: the hub hands every stream the same event object,
so one conversion serves all of them (measured: 10,000 conversions per event otherwise)."""

Context = grpc.aio.ServicerContext[Any, Any]
Response = TypeVar("Response")


async def abort(context: Context, exc: GatewayError, *, message: str | None = None) -> NoReturn:
    status = to_status(exc, message=message)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")


class _EventMessages:
    """Each event converted once, however many streams send it."""

    def __init__(self, size: int = PB_CACHE_SIZE) -> None:
        self._size = size
        # Keyed by identity; the entry keeps the event alive, so its id cannot be reused.
        self._entries: collections.OrderedDict[int, tuple[JobEvent, pb.JobEvent]] = (
            collections.OrderedDict()
        )

    def message(self, event: JobEvent) -> pb.JobEvent:
        entry = self._entries.get(id(event))
        if entry is not None and entry[0] is event:
            return entry[1]
        message = event_to_pb(event)
        self._entries[id(event)] = (event, message)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return message


def _unary(
    method: Callable[[DispatchServicer, Any, Context], Awaitable[Response]],
) -> Callable[[DispatchServicer, Any, Context], Awaitable[Response]]:
    @functools.wraps(method)
    async def wrapper(self: DispatchServicer, request: Any, context: Context) -> Response:
        self._begin()
        try:
            self.refuse_if_draining()
            return await method(self, request, context)
        except GatewayError as exc:
            await abort(context, exc)
        finally:
            self._end()

    return wrapper


class DispatchServicer(pb_grpc.DispatchServiceServicer):
    def __init__(
        self,
        gateway: Gateway,
        limits: ClientLimits | None = None,
        *,
        max_stream_age: float = MAX_STREAM_AGE,
    ) -> None:
        """Callers are authenticated before a method runs (interceptor.CallGuard): each method
        finds its caller with `auth.caller()`."""
        self.gateway = gateway
        self.limits = limits or ClientLimits()
        self.max_stream_age = max_stream_age
        self.in_flight = 0
        """DispatchService calls running now. A drain waits for them (its streams end at once
        when the hub closes), not for other services' streams such as a health Watch."""
        self.idle = asyncio.Event()
        self._messages = _EventMessages()
        self.idle.set()
        self.draining = False
        """Set on SIGTERM: new calls are refused with UNAVAILABLE while those in flight finish."""

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry, another replica will answer")

    def _begin(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def _end(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    @_unary
    async def Dispatch(self, request: pb.DispatchRequest, context: Context) -> pb.DispatchResponse:
        client = caller()
        self.limits.take_dispatch(client.name)
        spec = spec_from_request(request)
        authorize(client, spec.services, spec.mode)
        self.limits.check_queue(client.name)
        job = await self.gateway.dispatches.submit(
            client.name, spec, budget=context.time_remaining()
        )
        if job.state is JobState.QUEUED:
            self.limits.queued(client.name, job.job_id)
        response = pb.DispatchResponse()
        fill_job(response.job, job)
        return response

    @_unary
    async def Validate(self, request: pb.DispatchRequest, context: Context) -> pb.ValidateResponse:
        spec = spec_from_request(request)
        authorize(caller(), spec.services)
        try:
            answer = await self.gateway.dispatches.validate(spec)
        except UpstreamError as exc:
            if exc.retryable or exc.failure.http_status not in (400, 404, 415, 417):
                raise
            return pb.ValidateResponse(valid=False, error=failure_to_pb(exc.failure))
        return pb.ValidateResponse(valid=True, result=dict_to_struct(answer))

    @_unary
    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        check_job_id(request.job_id)
        job = await self.gateway.reads.get_job(caller().name, request.job_id)
        message = job_to_pb(job)
        message.attempts.extend(attempt_to_pb(a) for a in await self.gateway.reads.attempts(job))
        return message

    @_unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        check_page_token(request.page_token)
        jobs, next_token = await self.gateway.reads.list_jobs(
            caller().name, request.page_size, request.page_token
        )
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs], next_page_token=next_token)

    @_unary
    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Context
    ) -> pb.ListTemplatesResponse:
        templates = await self.gateway.dispatches.templates()
        return pb.ListTemplatesResponse(templates=[template_to_pb(t) for t in templates])

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncGenerator[pb.JobEvent, None]:
        def events(client: str) -> AsyncGenerator[JobEvent, None]:
            check_job_id(request.job_id)
            return self.gateway.streams.watch(client, request.job_id)

        stream = self._stream(context, events, "")
        async with contextlib.aclosing(stream) as messages:
            async for message in messages:
                yield message

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncGenerator[pb.JobEvent, None]:
        def events(client: str) -> AsyncGenerator[JobEvent, None]:
            return self.gateway.streams.subscribe(
                client,
                request.after_cursor,
                filter_from_request(request),
                live_only=request.live_only,
            )

        async with contextlib.aclosing(
            self._stream(context, events, request.after_cursor)
        ) as messages:
            async for message in messages:
                yield message

    async def _stream(
        self,
        context: Context,
        events: Callable[[str], AsyncGenerator[JobEvent, None]],
        after: str,
    ) -> AsyncGenerator[pb.JobEvent, None]:
        last = after
        age = self.max_stream_age * (1.0 - STREAM_AGE_JITTER * random.random())
        self._begin()
        try:
            self.refuse_if_draining()
            client = caller().name
            with self.limits.stream(client):
                async with asyncio.timeout(age), contextlib.aclosing(events(client)) as stream:
                    async for event in stream:
                        yield self._messages.message(event)
                        last = event.cursor
        except TimeoutError:
            await abort(
                context,
                ShuttingDown("the stream reached its maximum age"),
                message=f"the stream reached its maximum age; {_resume(last)}",
            )
        except (ShuttingDown, SlowConsumer) as exc:
            await abort(context, exc, message=f"{exc}; {_resume(last)}")
        except GatewayError as exc:
            await abort(context, exc)
        finally:
            self._end()


def _resume(last: str) -> str:
    if last:
        return f"resume with after_cursor={last!r}"
    return "resume by calling again"
