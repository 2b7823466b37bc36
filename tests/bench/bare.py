"""The baselines: servers on the gateway's own stack that do no work of the gateway's.

python -m tests.bench.bare grpc --port P --admin-port A
    DispatchService answering Dispatch with a ready-made job and holding Subscribe streams;
    GET /readyz counts the streams, POST /broadcast sends one event to every stream.
python -m tests.bench.bare webhook --port P [--reuse-port]
    The webhook route on uvicorn and Starlette that only verifies the signature; with
    --reuse-port, several of them share the port (the baseline of GATEWAY_WORKERS).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.httpserver import start_http
from dispatcher_gateway.rpc.server import GrpcLimits
from dispatcher_gateway.webhooks import WebhookVerifier
from dispatcher_gateway.webhooks.app import WEBHOOK_PATH

from .messages import WEBHOOK_SECRET, broadcast_event, dispatch_response

HOST = "127.0.0.1"


class BareDispatch(pb_grpc.DispatchServiceServicer):
    def __init__(self) -> None:
        self.response = dispatch_response()
        self.event = broadcast_event()
        self.streams: set[asyncio.Queue[pb.JobEvent]] = set()

    async def Dispatch(self, request: pb.DispatchRequest, context: Any) -> pb.DispatchResponse:
        return self.response

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.JobEvent]:
        queue: asyncio.Queue[pb.JobEvent] = asyncio.Queue()
        self.streams.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.streams.discard(queue)

    def broadcast(self) -> int:
        for queue in self.streams:
            queue.put_nowait(self.event)
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
    port: int, admin_port: int, stop: asyncio.Event, *, reuse_port: bool = False
) -> None:
    servicer = BareDispatch()
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


def webhook_app(verifier: WebhookVerifier) -> Starlette:
    async def receive_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        verifier.verify(body, request.headers)
        return JSONResponse({"status": "recorded"})

    async def readyz(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True, "streams": 0})

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive_webhook, methods=["POST"]),
            Route("/readyz", readyz),
        ]
    )


async def serve_webhook(port: int, stop: asyncio.Event, *, reuse_port: bool = False) -> None:
    app = webhook_app(WebhookVerifier([WEBHOOK_SECRET]))
    server = await start_http(app, HOST, port, reuse_port=reuse_port)
    await stop.wait()
    await server.stop()


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "grpc":
        await serve_grpc(args.port, args.admin_port, stop, reuse_port=args.reuse_port)
    else:
        await serve_webhook(args.port, stop, reuse_port=args.reuse_port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["grpc", "webhook"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--reuse-port", action="store_true", help="share the port (SO_REUSEPORT)")
    asyncio.run(main(parser.parse_args()))
