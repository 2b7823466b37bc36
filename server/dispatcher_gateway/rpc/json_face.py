"""DispatchService as JSON over HTTP, for clients without a gRPC toolchain (shell scripts, PHP,
serverless runtimes, browsers' fetch).

Each method is `POST /dispatcher.gateway.v1.DispatchService/METHOD` (gRPC's own path) with the
request message in protobuf's JSON form (`Content-Type: application/json`; field names in
lowerCamelCase or as in the .proto). A unary method answers its response message as JSON; the
two streams (WatchJob, Subscribe) answer Server-Sent Events, one `JobEvent` per event with the
event's cursor as its SSE `id`, and end with one `status` event. `Last-Event-ID` on Subscribe is
its `after_cursor`: an SSE client that reconnects resumes with no gap and no repeat.

The call itself is the gRPC servicer's: the same methods, given the decoded message, so that
validation, authorization, per-client limits and cursors are the gRPC face's own. What the
CallGuard interceptor does for gRPC, this face does for HTTP with the same parts: a request that
does not decode (as JSON, or as the binary message it stands for) is INVALID_ARGUMENT; the
caller is authenticated by the same bearer tokens; calls are counted for a drain and refused
once it begins; a domain error is the status rpc/errors.py gives it; anything else is INTERNAL
with a reference. An error is google.rpc.Status as JSON, with the code's name beside its number
and the details unpacked, on the HTTP status google/rpc/code.proto maps the code to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dispatcher.gateway.v1 import gateway_pb2 as pb

from ..core.errors import GatewayError, ShuttingDown
from .auth import Authenticator, set_caller
from .drain import REFUSAL, Drain
from .errors import to_status
from .interceptor import UNDECODABLE
from .server import SERVICE_NAME
from .servicer import DispatchServicer
from .throttled_log import ThrottledLog, one_line, report_internal

log = logging.getLogger("dispatcher_gateway.rpc")

JSON_MEDIA_TYPE = "application/json"
SSE_MEDIA_TYPE = "text/event-stream"
MAX_REQUEST_BYTES = 4 << 20
"""A request body: gRPC's own limit on a received message (GrpcLimits)."""
STATUS_DETAILS = "grpc-status-details-bin"
HEARTBEAT = 15.0
"""Seconds without an event before a stream sends a comment line."""
HEARTBEAT_LINE = b": heartbeat\n\n"

# google/rpc/code.proto's HTTP mapping, the one the gRPC face's callers see as codes.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class _Method:
    request: type[Message]
    streaming: bool


_METHODS: dict[str, _Method] = {
    "Dispatch": _Method(pb.DispatchRequest, False),
    "Validate": _Method(pb.DispatchRequest, False),
    "DispatchBatch": _Method(pb.DispatchBatchRequest, False),
    "GetJob": _Method(pb.GetJobRequest, False),
    "ListJobs": _Method(pb.ListJobsRequest, False),
    "ListTemplates": _Method(pb.ListTemplatesRequest, False),
    "CancelJob": _Method(pb.CancelJobRequest, False),
    "RetryJob": _Method(pb.RetryJobRequest, False),
    "WatchJob": _Method(pb.WatchJobRequest, True),
    "Subscribe": _Method(pb.SubscribeRequest, True),
}


# The servicer's methods, called with the decoded message and a stand-in of their context.
_Unary = Callable[[Message, Any], Awaitable[Message]]
_Streaming = Callable[[Message, Any], AsyncGenerator[pb.JobEvent, None]]


class CallFailed(Exception):
    """A status the face answers itself (admission), not a domain error of the call."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class _Context:
    """What the servicer reads of its gRPC context: the time the call has left (HTTP calls have
    no deadline, as a gRPC call without one)."""

    def time_remaining(self) -> float | None:
        return None


def to_json(message: Message) -> str:
    """protobuf's JSON form: lowerCamelCase names, enums by name, defaults left out."""
    return json_format.MessageToJson(message, indent=None)


def status_body(status: status_pb2.Status) -> dict[str, Any]:
    """google.rpc.Status as JSON, with the code's name as `status`, and each detail unpacked
    (its `@type` says which google.rpc message it is)."""
    body = json_format.MessageToDict(status)
    body["code"] = status.code
    body["status"] = _CODES.get(status.code, grpc.StatusCode.UNKNOWN).name
    return body


def status_of(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code.value[0], message=message)


def domain_status(exc: GatewayError) -> status_pb2.Status:
    """The status the gRPC face gives a domain error, details included."""
    status = to_status(exc)
    for key, value in status.trailing_metadata:
        if key == STATUS_DETAILS and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_of(status.code, status.details)


def error_response(status: status_pb2.Status) -> Response:
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    headers = {}
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            headers["retry-after"] = str(max(1, round(retry.retry_delay.ToTimedelta().seconds)))
    return Response(
        json.dumps(status_body(status)),
        status_code=HTTP_STATUS.get(code, 500),
        media_type=JSON_MEDIA_TYPE,
        headers=headers,
    )


def sse(data: str, *, event: str = "", event_id: str = "") -> bytes:
    """One Server-Sent Event. `data` is one line of JSON, so one `data:` field carries it."""
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


class JsonFace:
    def __init__(self, servicer: DispatchServicer, auth: Authenticator, drain: Drain) -> None:
        """`drain`: the gRPC face's, so that one drain counts and refuses the calls of both."""
        self.servicer = servicer
        self.auth = auth
        self.drain = drain
        self.log = ThrottledLog(log)

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route(f"/{SERVICE_NAME}/{{method}}", self.handle, methods=["POST"])]
        )

    async def handle(self, request: Request) -> Response:
        name = str(request.path_params["method"])
        try:
            method = _METHODS.get(name)
            if method is None:
                raise CallFailed(grpc.StatusCode.UNIMPLEMENTED, f"no method {name[:64]!r}")
            message = await self._decoded(request, name, method.request)
            client = self._authenticated(request, name)
            if self.drain.draining:
                raise ShuttingDown(REFUSAL)
        except CallFailed as exc:
            return error_response(status_of(exc.code, str(exc)))
        except GatewayError as exc:
            return error_response(domain_status(exc))
        if method.streaming:
            return self._stream(request, name, message, client)
        try:
            set_caller(client)
            with self.drain.call():
                call = cast(_Unary, getattr(self.servicer, name))
                answer = await call(message, _Context())
        except Exception as exc:
            return error_response(self._failure(name, exc))
        return Response(to_json(answer), media_type=JSON_MEDIA_TYPE)

    async def _decoded(self, request: Request, name: str, kind: type[Message]) -> Message:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                raise CallFailed(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request is larger than {MAX_REQUEST_BYTES} bytes",
                )
        message = kind()
        if not body.strip():
            return message
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            raise CallFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send the request as JSON (Content-Type: {JSON_MEDIA_TYPE})",
            )
        try:
            json_format.Parse(bytes(body), message)
            # As the gRPC face would have decoded it: the same limits (Struct depth) hold.
            return kind.FromString(message.SerializeToString())
        # ParseError, DecodeError, RecursionError: whatever a decoder raises on odd input.
        except Exception:
            self.log.log(
                logging.INFO,
                "undecodable",
                "%s: a request of %d bytes from %s did not decode",
                f"/{SERVICE_NAME}/{name}",
                len(body),
                one_line(_peer(request)),
            )
            raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE) from None

    def _authenticated(self, request: Request, name: str) -> Any:
        header = request.headers.get("authorization")
        metadata = [("authorization", header)] if header is not None else []
        try:
            return self.auth.client(metadata)
        except GatewayError as exc:
            self.log.log(
                logging.INFO,
                "refused",
                "%s refused for %s: %s",
                f"/{SERVICE_NAME}/{name}",
                one_line(_peer(request)),
                exc,
            )
            raise

    def _failure(self, name: str, exc: Exception) -> status_pb2.Status:
        """The status of what a call raised: a domain error's own, INTERNAL for the rest."""
        if isinstance(exc, GatewayError):
            return domain_status(exc)
        return status_of(
            grpc.StatusCode.INTERNAL, report_internal(self.log, f"/{SERVICE_NAME}/{name}", exc)
        )

    def _stream(self, request: Request, name: str, message: Message, client: Any) -> Response:
        if isinstance(message, pb.SubscribeRequest):
            resume = request.headers.get("last-event-id", "")
            if resume:
                # An SSE client reconnecting: on from its last event, whatever it first asked.
                message.after_cursor = resume
                message.live_only = False
                message.ClearField("start_time")
        return StreamingResponse(
            self._events(name, message, client),
            media_type=SSE_MEDIA_TYPE,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _events(self, name: str, message: Message, client: Any) -> AsyncIterator[bytes]:
        """The call's events, then its status (OK when it ended by itself): a client tells a
        stream that ended from a connection that broke. A comment line every HEARTBEAT seconds
        without an event keeps proxies from closing a quiet stream, and finds a client gone."""
        set_caller(client)
        call = cast(_Streaming, getattr(self.servicer, name))
        status = status_of(grpc.StatusCode.OK, "")
        try:
            with self.drain.call():
                async with _pumped(call(message, _Context())) as next_event:
                    while True:
                        try:
                            event = await asyncio.wait_for(next_event(), HEARTBEAT)
                        except TimeoutError:
                            yield HEARTBEAT_LINE
                            continue
                        if event is None:
                            break
                        yield sse(to_json(event), event_id=event.cursor)
        except Exception as exc:
            status = self._failure(name, exc)
        yield sse(json.dumps(status_body(status)), event="status")


@contextlib.asynccontextmanager
async def _pumped(
    events: AsyncGenerator[pb.JobEvent, None],
) -> AsyncIterator[Callable[[], Awaitable[pb.JobEvent | None]]]:
    """The stream iterated whole in a task of its own, handed over one event at a time (None at
    its end; its error raised). One task, because the servicer's stream ends itself at its
    maximum age with asyncio.timeout, which cancels the task it began in; one event held, so
    that a slow reader still falls behind the hub and is ended as on gRPC."""
    handed: asyncio.Queue[pb.JobEvent | Exception | None] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    await handed.put(event)
        except Exception as exc:
            await handed.put(exc)
            return
        await handed.put(None)

    async def next_event() -> pb.JobEvent | None:
        item = await handed.get()
        if isinstance(item, Exception):
            raise item
        return item

    task = asyncio.create_task(pump(), name="json-face-stream")
    try:
        yield next_event
    finally:
        task.cancel()
        # Not `await task`: that would take this task's own cancellation for the pump's.
        await asyncio.wait({task})


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"
