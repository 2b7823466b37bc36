"""`dispatcher-gateway jobs [JOB_ID]`: your jobs, newest first; or one, with every request the
gateway sent upstream for it."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb

from .connection import Connection, add_client_command, refused
from .output import job_line, job_text, json_line

TIMEOUT = 10.0
"""Seconds a read of jobs may take."""


def add_command(commands: Any) -> None:
    jobs = add_client_command(commands, "jobs", "list your jobs, or show one")
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    async with Connection(args) as connection:
        stub, metadata = connection.stub, connection.metadata
        try:
            if args.job_id:
                request = pb.GetJobRequest(job_id=args.job_id)
                job = await stub.GetJob(request, timeout=TIMEOUT, metadata=metadata)
                print(json_line(job) if args.json else job_text(job))
                return 0
            page = await stub.ListJobs(
                pb.ListJobsRequest(page_size=args.limit), timeout=TIMEOUT, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            return refused(exc)
        for job in page.jobs:
            print(job_line(job))
    return 0
