"""`dispatcher-gateway jobs [JOB_ID]`: your jobs, newest first; or one, with every request the
gateway sent upstream for it. `jobs cancel JOB_ID` withdraws a job not yet sent upstream;
`jobs retry JOB_ID` sends a failed one again as a new job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb

from .connection import Connection, add_client_command, refused
from .output import job_line, job_text, json_line

TIMEOUT = 10.0
"""Seconds a read of jobs may take."""


ACTIONS = ("cancel", "retry")
"""Words that come before a job id (job ids begin with `job_`, so none is one)."""


def add_command(commands: Any) -> None:
    jobs = add_client_command(commands, "jobs", "list your jobs, show one, or cancel or retry one")
    jobs.add_argument("job_id", nargs="?", help="a job id, or cancel / retry")
    jobs.add_argument(
        "action_job_id", nargs="?", metavar="JOB_ID", help="the job to cancel or retry"
    )
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    action = args.job_id if args.job_id in ACTIONS else ""
    if bool(action) != bool(args.action_job_id):
        usage = " | ".join(f"{a} JOB_ID" for a in ACTIONS)
        print(f"usage: dispatcher-gateway jobs [JOB_ID | {usage}]", file=sys.stderr)
        return 2
    async with Connection(args) as connection:
        stub, metadata = connection.stub, connection.metadata
        options: dict[str, Any] = {"timeout": TIMEOUT, "metadata": metadata}
        try:
            if not args.job_id:
                page = await stub.ListJobs(
                    pb.ListJobsRequest(page_size=args.limit), timeout=TIMEOUT, metadata=metadata
                )
                for listed in page.jobs:
                    print(job_line(listed))
                return 0
            call: Awaitable[pb.Job]
            if action == "cancel":
                call = stub.CancelJob(pb.CancelJobRequest(job_id=args.action_job_id), **options)
            elif action == "retry":
                call = stub.RetryJob(pb.RetryJobRequest(job_id=args.action_job_id), **options)
            else:
                call = stub.GetJob(pb.GetJobRequest(job_id=args.job_id), **options)
            job: pb.Job = await call
            print(json_line(job) if args.json else job_text(job))
            return 0
        except grpc.aio.AioRpcError as exc:
            return refused(exc)
    return 0
