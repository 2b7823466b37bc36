"""DispatchService's two faces behind one small interface, so that one table of calls and
expected statuses runs on both: gRPC (a real channel) and JSON over HTTP (real HTTP, Server-Sent
Events for streams). A call answers its response message (a stream: every event it sent before
its end), or raises `Failed` with the status: code, message and google.rpc details unpacked."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

from .loopback import GatewayFactory

SERVICE = "dispatcher.gateway.v1.DispatchService"
CALL_TIMEOUT = 10.0
STREAMS = frozenset({"WatchJob", "Subscribe"})
_DETAIL_KINDS = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
)


@dataclass
class Failed(Exception):
    code: grpc.StatusCode
    message: str
    details: list[Message] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [
            v.field
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]


def unpacked(status: status_pb2.Status) -> list[Message]:
    found: list[Message] = []
    for detail in status.details:
        for kind in _DETAIL_KINDS:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found.append(message)
    return found


def failed_from_json(body: dict[str, Any]) -> Failed:
    """The JSON face's error body: google.rpc.Status as JSON, with the code's name."""
    name = body.pop("status")
    status = json_format.ParseDict(body, status_pb2.Status())
    code = grpc.StatusCode[name]
    assert code.value[0] == status.code, body
    return Failed(code, status.message, unpacked(status))


class Face:
    name: str

    async def call(self, method: str, request: Message, token: str | None = None) -> Any:
        raise NotImplementedError


class GrpcFace(Face):
    name = "grpc"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = pb_grpc.DispatchServiceStub(channel)

    async def call(self, method: str, request: Message, token: str | None = None) -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        rpc = getattr(self.stub, method)
        try:
            if method in STREAMS:
                async with asyncio.timeout(CALL_TIMEOUT):
                    return [event async for event in rpc(request, metadata=metadata)]
            return await rpc(request, timeout=CALL_TIMEOUT, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
            details = unpacked(status) if status is not None else []
            raise Failed(exc.code(), exc.details() or "", details) from None


_RESPONSES: dict[str, type[Message]] = {
    "Dispatch": pb.DispatchResponse,
    "Validate": pb.ValidateResponse,
    "DispatchBatch": pb.DispatchBatchResponse,
    "GetJob": pb.Job,
    "CancelJob": pb.Job,
    "RetryJob": pb.Job,
    "ListJobs": pb.ListJobsResponse,
    "ListTemplates": pb.ListTemplatesResponse,
}


@dataclass
class SseEvent:
    id: str = ""
    event: str = ""
    data: str = ""


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream body, as the SSE specification parses them (the subset
    the gateway sends: id, event, one data line; comments skipped)."""
    current = SseEvent()
    async for line in response.aiter_lines():
        if not line:
            if current.data or current.event:
                yield current
            current = SseEvent()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            setattr(current, name, value.removeprefix(" "))


class JsonFace(Face):
    name = "json"

    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client = client
        self.base = base

    def url(self, method: str) -> str:
        return f"{self.base}/{SERVICE}/{method}"

    async def call(self, method: str, request: Message, token: str | None = None) -> Any:
        return await self.call_raw(method, json_format.MessageToJson(request), token=token)

    async def call_raw(
        self, method: str, body: str | bytes, token: str | None = None, **headers: str
    ) -> Any:
        sent = {"content-type": "application/json", **headers}
        if token:
            sent["authorization"] = f"Bearer {token}"
        if method not in STREAMS:
            response = await self.client.post(self.url(method), content=body, headers=sent)
            if response.status_code != 200:
                raise failed_from_json(response.json())
            return json_format.Parse(response.text, _RESPONSES[method]())
        async with (
            asyncio.timeout(CALL_TIMEOUT),
            self.client.stream("POST", self.url(method), content=body, headers=sent) as response,
        ):
            if response.status_code != 200:
                await response.aread()
                raise failed_from_json(response.json())
            assert response.headers["content-type"].startswith("text/event-stream")
            events: list[pb.JobEvent] = []
            async for item in sse_events(response):
                if item.event == "status":
                    failure = failed_from_json(json.loads(item.data))
                    if failure.code != grpc.StatusCode.OK:
                        raise failure
                    return events
                event = json_format.Parse(item.data, pb.JobEvent())
                assert item.id == event.cursor
                events.append(event)
        raise AssertionError("the stream ended without its status event")


FACES = ("grpc", "json")


@contextlib.asynccontextmanager
async def face_on(name: str, gateways: GatewayFactory) -> AsyncIterator[Face]:
    """The face called `name` of the gateway `gateways` runs."""
    if name == "grpc":
        async with grpc.aio.insecure_channel(gateways.target) as channel:
            yield GrpcFace(channel)
    else:
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT) as client:
            yield JsonFace(client, gateways.http_url)
