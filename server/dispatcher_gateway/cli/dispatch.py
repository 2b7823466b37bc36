"""`dispatcher-gateway dispatch`: one request, from options or from a DispatchRequest in JSON;
with --watch, its job followed to its end."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb

from .connection import Connection, add_client_command, refused
from .output import SERVICES, json_line, print_event, state_name
from .times import parse_time

TIMEOUT = 150.0
"""Seconds a Dispatch call may take: longer than the upstream's own limit on a sync answer."""


def add_command(commands: Any) -> None:
    dispatch = add_client_command(commands, "dispatch", "dispatch one request")
    dispatch.add_argument("--service", choices=sorted(SERVICES), default="email")
    dispatch.add_argument("--chain", choices=sorted(SERVICES), action="append", default=[])
    dispatch.add_argument("--sync", action="store_true", help="wait for the upstream's answer")
    dispatch.add_argument("--template", type=int, default=1)
    dispatch.add_argument("--data", default="{}", help="template data, a JSON object")
    dispatch.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    dispatch.add_argument("--from", dest="sender", default="noreply@example.com")
    dispatch.add_argument("--subject", default="")
    dispatch.add_argument("--text", default="")
    dispatch.add_argument("--provider", default="")
    dispatch.add_argument("--metadata", action="append", default=[], help="KEY=VALUE")
    dispatch.add_argument("--idempotency-key", default="")
    dispatch.add_argument(
        "--not-before", help="not sent before this time (RFC 3339, or +15m from now)"
    )
    dispatch.add_argument("--request", help="a DispatchRequest as JSON, from a file or - (stdin)")
    dispatch.add_argument("--watch", action="store_true", help="follow the job to its end")
    dispatch.add_argument("--timeout", type=float, default=TIMEOUT)
    dispatch.set_defaults(run=run)


def _metadata_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--metadata takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def build_request(args: argparse.Namespace) -> pb.DispatchRequest:
    request = _request(args)
    if args.not_before:
        request.not_before.CopyFrom(parse_time(args.not_before, "--not-before"))
    return request


def _request(args: argparse.Namespace) -> pb.DispatchRequest:
    if args.request:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        return json_format.Parse(text, pb.DispatchRequest())
    request = pb.DispatchRequest(
        service=SERVICES[args.service],
        chain=[SERVICES[s] for s in args.chain],
        mode=pb.MODE_SYNC if args.sync else pb.MODE_ASYNC,
        provider_name=args.provider,
        metadata=_metadata_pairs(args.metadata),
        idempotency_key=args.idempotency_key,
    )
    request.template.id = args.template
    request.template.data.update(json.loads(args.data))
    services = {args.service, *args.chain}
    if "email" in services:
        request.email.sender.email = args.sender
        request.email.to.extend(pb.EmailAddress(email=a) for a in args.to)
        request.email.subject = args.subject
        request.email.text = args.text
    if "sms" in services:
        request.sms.to.extend(args.to)
        request.sms.text = args.text
    if "esign" in services:
        # --to names the signers, --subject the document.
        request.esign.document_name = args.subject or "Document"
        request.esign.signers.extend(pb.Signer(email=a) for a in args.to)
    return request


async def run(args: argparse.Namespace) -> int:
    request = build_request(args)
    async with Connection(args) as connection:
        stub, metadata = connection.stub, connection.metadata
        try:
            response = await stub.Dispatch(request, timeout=args.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return refused(exc)
        job = response.job
        if args.json:
            print(json_line(job), flush=True)
        else:
            print(f"job {job.job_id}: {state_name(job.state)}", flush=True)
        if not args.watch:
            return 0
        try:
            watched = stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata)
            async for event in watched:
                print_event(event, args.json)
        except grpc.aio.AioRpcError as exc:
            return refused(exc)
    return 0
