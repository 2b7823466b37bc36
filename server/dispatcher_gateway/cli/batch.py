"""`dispatcher-gateway dispatch-batch FILE`: the DispatchRequests of a JSON Lines file (one per
line, protobuf's JSON form) in one DispatchBatch call; one line per result, in order."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb

from .connection import Connection, add_client_command, refused
from .output import json_line, state_name

TIMEOUT = 60.0
"""Seconds a DispatchBatch call may take: it stores its jobs, it sends nothing upstream."""
SOME_REFUSED = 2
"""Exit status when the call was answered but some of its requests were refused."""


def add_command(commands: Any) -> None:
    batch = add_client_command(
        commands, "dispatch-batch", "dispatch the requests of a JSON Lines file in one call"
    )
    batch.add_argument("file", help="one DispatchRequest as JSON per line; - for stdin")
    batch.add_argument("--timeout", type=float, default=TIMEOUT)
    batch.set_defaults(run=run)


def read_requests(path: str) -> list[pb.DispatchRequest]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc.strerror}") from None
    requests = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            requests.append(json_format.Parse(line, pb.DispatchRequest()))
        except json_format.ParseError as exc:
            raise SystemExit(f"{path}:{number}: not a DispatchRequest: {exc}") from None
    return requests


def result_line(number: int, result: pb.DispatchBatchResult) -> str:
    if result.HasField("job"):
        return f"{number:>4}  job {result.job.job_id}: {state_name(result.job.state)}"
    error = result.error
    fields = "; ".join(f"{v.field}: {v.description}" for v in error.field_violations)
    code = grpc.StatusCode
    name = next((c.name for c in code if c.value[0] == error.code), str(error.code))
    return f"{number:>4}  error {name}: {fields or error.message}"


async def run(args: argparse.Namespace) -> int:
    request = pb.DispatchBatchRequest(requests=read_requests(args.file))
    async with Connection(args) as connection:
        try:
            response = await connection.stub.DispatchBatch(
                request, timeout=args.timeout, metadata=connection.metadata
            )
        except grpc.aio.AioRpcError as exc:
            return refused(exc)
    for number, result in enumerate(response.results, 1):
        print(json_line(result) if args.json else result_line(number, result), flush=True)
    refusals = sum(1 for r in response.results if r.HasField("error"))
    if refusals:
        print(f"# {refusals} of {len(response.results)} refused", file=sys.stderr)
        return SOME_REFUSED
    return 0
