"""The DispatchService servicer: translates calls to core use cases, and raises core's errors
(the CallGuard interceptor reports them with their status)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

from ..core.errors import ShuttingDown, SlowConsumer, UpstreamError
from ..core.gateway import Gateway
from ..core.model import JobEvent, JobState
from ..tracing import current_traceparent
from .auth import authorize, caller
from .batch import BATCH_MAX, dispatch_batch
from .convert import (
    attempt_to_pb,
    check_job_id,
    check_page_token,
    dict_to_struct,
    event_to_pb,
    failure_to_pb,
    fill_estimate,
    fill_job,
    filter_from_request,
    job_to_pb,
    spec_from_request,
    start_time_of,
    template_to_pb,
)
from .errors import refuses_request
from .limits import ClientLimits

log = logging.getLogger("dispatcher_gateway.rpc")

STREAM_AGE_JITTER = 0.1
"""Streams end between (1 - jitter) and 1 times the maximum age, so that they do not all
reconnect at once."""

PB_CACHE_SIZE = 64
"""Live events whose protobuf form is kept: the hub hands every stream the same event object,
so one conversion serves all of them, not one per stream."""

MAX_PAGE_BYTES = (4 << 20) - (64 << 10)
"""A ListJobs page stays under gRPC's default 4 MiB receive limit, which most clients keep: a
page of jobs with large bodies ends early, its next_page_token going on from there (at least
one job per page)."""

Context = grpc.aio.ServicerContext[Any, Any]


def _fitting(messages: list[pb.Job], budget: int) -> int:
    """How many of `messages`, from the first, fit in `budget` bytes as a repeated field (at
    least one)."""
    used = 0
    for count, message in enumerate(messages):
        size = message.ByteSize()
        used += size + 1 + (size.bit_length() + 6) // 7  # its tag and length
        if used > budget:
            return max(count, 1)
    return len(messages)


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


class DispatchServicer(pb_grpc.DispatchServiceServicer):
    def __init__(
        self,
        gateway: Gateway,
        limits: ClientLimits | None = None,
        *,
        max_stream_age: float,
        batch_max: int = BATCH_MAX,
    ) -> None:
        """Each method runs behind the CallGuard interceptor: its caller is authenticated
        (`auth.caller()`), the call counted for a drain, and the domain errors it raises
        reported with their status."""
        self.gateway = gateway
        self.limits = limits or ClientLimits()
        self.max_stream_age = max_stream_age
        self.batch_max = batch_max
        self._messages = _EventMessages()

    async def Dispatch(self, request: pb.DispatchRequest, context: Context) -> pb.DispatchResponse:
        client = caller()
        self.limits.take_dispatch(client.name)
        spec = spec_from_request(request)
        authorize(client, spec.services, spec.mode)
        self.limits.check_queue(client.name)
        job, estimate = await self.gateway.dispatches.submit_estimated(
            client.name, spec, budget=context.time_remaining(), trace_context=current_traceparent()
        )
        if job.state is JobState.QUEUED:
            self.limits.queued(client.name, job.job_id)
        response = pb.DispatchResponse()
        fill_job(response.job, job)
        if estimate is not None:
            fill_estimate(response.estimate, estimate)
        return response

    async def Validate(self, request: pb.DispatchRequest, context: Context) -> pb.ValidateResponse:
        spec = spec_from_request(request)
        authorize(caller(), spec.services)
        try:
            answer = await self.gateway.dispatches.validate(spec)
        except UpstreamError as exc:
            if not refuses_request(exc):
                raise
            return pb.ValidateResponse(valid=False, error=failure_to_pb(exc.failure))
        return pb.ValidateResponse(valid=True, result=dict_to_struct(answer))

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        check_job_id(request.job_id)
        job = await self.gateway.reads.get_job(caller().name, request.job_id)
        message = job_to_pb(job)
        message.attempts.extend(attempt_to_pb(a) for a in await self.gateway.reads.attempts(job))
        return message

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        check_page_token(request.page_token)
        client, token = caller().name, request.page_token
        jobs, next_token = await self.gateway.reads.list_jobs(client, request.page_size, token)
        while True:
            messages = [job_to_pb(j) for j in jobs]
            fits = _fitting(messages, MAX_PAGE_BYTES)
            if fits >= len(messages):
                return pb.ListJobsResponse(jobs=messages, next_page_token=next_token)
            # The page, asked again for as many jobs as fit, so that its token goes on after
            # the last one sent (tokens are the store's own); measured again, as jobs may have
            # grown or been added meanwhile.
            jobs, next_token = await self.gateway.reads.list_jobs(client, fits, token)

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Context
    ) -> pb.ListTemplatesResponse:
        templates = await self.gateway.dispatches.templates()
        return pb.ListTemplatesResponse(templates=[template_to_pb(t) for t in templates])

    # Issue 14's calls: declared in the proto, built on their own branches.
    async def DispatchBatch(
        self, request: pb.DispatchBatchRequest, context: Context
    ) -> pb.DispatchBatchResponse:
        return await dispatch_batch(
            self.gateway,
            self.limits,
            caller(),
            request.requests,
            batch_max=self.batch_max,
            trace_context=current_traceparent(),
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        check_job_id(request.job_id)
        return job_to_pb(await self.gateway.control.cancel(caller().name, request.job_id))

    async def RetryJob(self, request: pb.RetryJobRequest, context: Context) -> pb.Job:
        check_job_id(request.job_id)
        client = caller()
        old = await self.gateway.reads.get_job(client.name, request.job_id)
        # The new job is a dispatch of the same request: the client's rights and queue apply.
        authorize(client, old.services)
        if not old.retried_by:
            self.limits.check_queue(client.name)
        job = await self.gateway.control.retry(client.name, request.job_id)
        if job.state is JobState.QUEUED:
            self.limits.queued(client.name, job.job_id)
        return job_to_pb(job)

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
                since=start_time_of(request),
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
        """The events as messages; a stream the server ends says where to resume."""
        last = after
        client = caller().name
        age = _Age(stream_age(self.max_stream_age))
        try:
            with self.limits.stream(client):
                async with contextlib.aclosing(events(client)) as stream:
                    while True:
                        event = await age.next_of(stream)
                        if event is None:
                            return
                        yield self._messages.message(event)
                        last = event.cursor
        except TimeoutError:
            raise ShuttingDown(f"the stream reached its maximum age; {_resume(last)}") from None
        except (ShuttingDown, SlowConsumer) as exc:
            raise type(exc)(f"{exc}; {_resume(last)}") from None
        finally:
            age.cancel()


class _Age:
    """A stream's maximum age, as one timer for the stream's life (not one per event: a broadcast
    to every stream would set and clear as many). It ends only the wait for the next event: a
    timeout around the yield would cancel the task where it sends (grpc's own code, waiting for a
    slow reader), and leave the call with no status at all. Reached while an event is being
    sent, it ends the stream before the next wait."""

    def __init__(self, seconds: float) -> None:
        self._task = asyncio.current_task()
        self._waiting = False
        self._reached = False
        self._timer = asyncio.get_running_loop().call_later(seconds, self._reach)

    def _reach(self) -> None:
        self._reached = True
        if self._waiting and self._task is not None:
            self._task.cancel()

    async def next_of(self, stream: AsyncIterator[JobEvent]) -> JobEvent | None:
        """The stream's next event (None at its end), unless the age is reached first: then
        TimeoutError."""
        if self._reached:
            raise TimeoutError
        self._waiting = True
        try:
            return await anext(stream, None)
        except asyncio.CancelledError:
            # Ours only if no one else cancelled the task too (the call's own cancellation).
            if self._reached and self._task is not None and self._task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def cancel(self) -> None:
        self._timer.cancel()


def stream_age(max_age: float) -> float:
    """How long one stream lasts: drawn anew for each stream as it starts, between (1 - jitter)
    and 1 times the maximum age."""
    return max_age * (1.0 - STREAM_AGE_JITTER * random.random())


def _resume(last: str) -> str:
    if last:
        return f"resume with after_cursor={last!r}"
    return "resume by calling again"
