"""`dispatcher-gateway watch`: every event of your jobs, resuming by itself from the last cursor
when the server ends the stream."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb

from .connection import Connection, add_client_command, refused
from .output import print_event
from .times import parse_time

RESUME_DELAY = 1.0
"""Seconds `watch` waits before resuming a stream the server ended."""
RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
"""How the server ends a stream that should be resumed (drain, maximum age, a slow reader)."""


def add_command(commands: Any) -> None:
    watch = add_client_command(commands, "watch", "follow your event stream, resuming by itself")
    watch.add_argument("--after", default="", help="resume after this cursor")
    watch.add_argument(
        "--since", help="every event recorded since this time (RFC 3339, or -1h ago)"
    )
    watch.add_argument("--job", action="append", default=[], help="only this job (repeatable)")
    watch.add_argument("--once", action="store_true", help="do not resume when the server ends it")
    watch.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    after = args.after
    since = parse_time(args.since, "--since") if args.since else None
    async with Connection(args) as connection:
        stub = connection.stub
        while True:
            request = pb.SubscribeRequest(after_cursor=after, job_ids=args.job)
            if since is not None and not after:
                request.start_time.CopyFrom(since)
            try:
                async for event in stub.Subscribe(request, metadata=connection.metadata):
                    print_event(event, args.json)
                    after = event.cursor
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RESUMABLE or args.once:
                    return refused(exc)
                print(
                    f"# stream ended ({exc.code().name}); resuming after {after!r}", file=sys.stderr
                )
                await asyncio.sleep(RESUME_DELAY)
            else:
                return 0
