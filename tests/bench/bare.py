"""The baselines: servers on the gateway's own stack that do no work of the gateway's.

python -m tests.bench.bare grpc --port P --admin-port A
    DispatchService answering Dispatch with a ready-made job and holding Subscribe streams;
    GET /readyz counts the streams, POST /broadcast sends one event to every stream.
python -m tests.bench.bare webhook --port P [--reuse-port]
    The webhook route on uvicorn and Starlette that only verifies the signature; with
    --reuse-port, several of them share the port (the baseline of GATEWAY_WORKERS).

The floors: with --store FILE, each also does the least that a gateway which loses nothing must
add. The gRPC server writes one row per Dispatch before answering it; with --upstream URL too
(DISPATCHER_EMAIL and DISPATCHER_PASSWORD in its environment), a sync Dispatch writes a row, sends
the request upstream with httpx and writes the answer as a row before answering (B5's floor). The
webhook server writes one row per webhook, then sends one event to each Subscribe stream it holds
(on --grpc-port).
The rows go to FILE in group commits from a thread of its own (floor.py), as the gateway's SQLite
store writes. No job, no dedupe, no JSON but the upstream request's: a gateway can get near a
floor, not past it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.httpserver import start_http
from dispatcher_gateway.rpc.convert import spec_from_request
from dispatcher_gateway.rpc.server import GrpcLimits
from dispatcher_gateway.webhooks import WebhookVerifier
from dispatcher_gateway.webhooks.app import WEBHOOK_PATH

from .floor import GroupWriter
from .messages import WEBHOOK_SECRET, basic_authorization, broadcast_event, dispatch_response

HOST = "127.0.0.1"


class BareDispatch(pb_grpc.DispatchServiceServicer):
    def __init__(
        self, writer: GroupWriter | None = None, upstream: httpx.AsyncClient | None = None
    ) -> None:
        self.response = dispatch_response()
        self.event = broadcast_event()
        self.streams: set[asyncio.Queue[pb.JobEvent]] = set()
        self.writer = writer
        self.upstream = upstream

    async def Dispatch(self, request: pb.DispatchRequest, context: Any) -> pb.DispatchResponse:
        if self.writer is not None:
            await self.writer.write(request.SerializeToString())
            if self.upstream is not None and request.mode == pb.MODE_SYNC:
                spec = spec_from_request(request)
                headers = {"X-Request-ID": uuid.uuid4().hex, "X-Idempotency-Key": uuid.uuid4().hex}
                answer = await self.upstream.post(spec.path, json=dict(spec.body), headers=headers)
                answer.raise_for_status()
                await self.writer.write(answer.content)
        return self.response

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.JobEvent]:
        stream: asyncio.Queue[pb.JobEvent] = asyncio.Queue()
        self.streams.add(stream)
        try:
            while True:
                yield await stream.get()
        finally:
            self.streams.discard(stream)

    def broadcast(self) -> int:
        for stream in self.streams:
            stream.put_nowait(self.event)
        return len(self.streams)


def grpc_server(limits: GrpcLimits, *, reuse_port: bool = False) -> grpc.aio.Server:
    """The same core options as the gateway's (rpc/server.py): the pending-request limits raised;
    `reuse_port` as a gateway's workers share theirs."""
    return grpc.aio.server(
        options=[
            ("grpc.server.max_pending_requests", limits.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_requests_hard_limit),
            ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
            ("grpc.max_receive_message_length", limits.max_receive_message_length),
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )


async def serve_grpc(
    port: int,
    admin_port: int,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
    writer: GroupWriter | None = None,
    upstream: httpx.AsyncClient | None = None,
) -> None:
    servicer = BareDispatch(writer, upstream)
    server = grpc_server(GrpcLimits(), reuse_port=reuse_port)
    pb_grpc.add_DispatchServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()

    async def readyz(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True, "streams": len(servicer.streams)})

    async def broadcast(request: Request) -> JSONResponse:
        return JSONResponse({"sent": servicer.broadcast()})

    admin = await start_http(
        Starlette(
            routes=[Route("/readyz", readyz), Route("/broadcast", broadcast, methods=["POST"])]
        ),
        HOST,
        admin_port,
    )
    await stop.wait()
    await server.stop(0)
    await admin.stop()


def webhook_app(verifier: WebhookVerifier, floor: BareDispatch | None = None) -> Starlette:
    """`floor`: each webhook also written by its writer, then sent to its streams."""

    async def receive_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        verifier.verify(body, request.headers)
        if floor is not None and floor.writer is not None:
            await floor.writer.write(body)
            floor.broadcast()
        return JSONResponse({"status": "recorded"})

    async def readyz(request: Request) -> JSONResponse:
        streams = len(floor.streams) if floor is not None else 0
        return JSONResponse({"ready": True, "streams": streams, "pid": os.getpid()})

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive_webhook, methods=["POST"]),
            Route("/readyz", readyz),
        ]
    )


async def serve_webhook(
    port: int,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
    writer: GroupWriter | None = None,
    grpc_port: int = 0,
) -> None:
    """With `writer`, the floor: its Subscribe streams on `grpc_port`."""
    floor, streams = None, None
    if writer is not None:
        floor = BareDispatch(writer)
        streams = grpc_server(GrpcLimits())
        pb_grpc.add_DispatchServiceServicer_to_server(floor, streams)
        streams.add_insecure_port(f"{HOST}:{grpc_port}")
        await streams.start()
    app = webhook_app(WebhookVerifier([WEBHOOK_SECRET]), floor)
    server = await start_http(app, HOST, port, reuse_port=reuse_port)
    await stop.wait()
    await server.stop()
    if streams is not None:
        await streams.stop(0)


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    writer = GroupWriter(args.store) if args.store else None
    upstream = None
    if args.upstream:
        basic = basic_authorization(
            os.environ["DISPATCHER_EMAIL"], os.environ["DISPATCHER_PASSWORD"]
        )
        upstream = httpx.AsyncClient(base_url=args.upstream, headers={"Authorization": basic})
    try:
        if args.kind == "grpc":
            await serve_grpc(
                args.port,
                args.admin_port,
                stop,
                reuse_port=args.reuse_port,
                writer=writer,
                upstream=upstream,
            )
        else:
            await serve_webhook(
                args.port, stop, reuse_port=args.reuse_port, writer=writer, grpc_port=args.grpc_port
            )
    finally:
        if upstream is not None:
            await upstream.aclose()
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["grpc", "webhook"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--reuse-port", action="store_true", help="share the port (SO_REUSEPORT)")
    parser.add_argument("--store", help="the floor: a durable row per call or webhook, here")
    parser.add_argument("--upstream", help="the sync floor: the upstream's base URL")
    parser.add_argument("--grpc-port", type=int, default=0, help="the floor's Subscribe streams")
    asyncio.run(main(parser.parse_args()))
