"""CancelJob and RetryJob through a real gateway process on the sandbox: a cancel that wins (the
job still waiting for a rate slot) and its job never seen upstream, a cancel too late; a job the
provider refused (the sandbox's `fail_rate` fault: a 417), retried once the fault is off, each
attempt sent upstream exactly once under its own key. The command line's `jobs cancel` and `jobs
retry` are run as an operator runs them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.cli import run_cli
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.process import gateway_env, gateway_process
from tests.support.requests import email_request

CALL_TIMEOUT = 10.0
END_TIMEOUT = 30.0
RATE_WINDOW = 4.0
"""One request upstream per window: the second job waits this long for its slot, unsent, and is
canceled meanwhile."""


async def ended(stub: pb_grpc.DispatchServiceStub, job_id: str) -> pb.Job:
    async with asyncio.timeout(END_TIMEOUT):
        while True:
            job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELED):
                return job
            await asyncio.sleep(0.05)


async def dispatch(stub: pb_grpc.DispatchServiceStub) -> str:
    response = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
    return response.job.job_id


def sent_keys(sandbox: RunningSandbox) -> list[str]:
    """The idempotency key of every dispatch request the sandbox received, in order."""
    return [r.idempotency_key for r in sandbox.sandbox.requests]


@contextlib.asynccontextmanager
async def running_gateway(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[pb_grpc.DispatchServiceStub, str]]:
    """A gateway process on the sandbox: a stub on it, and its gRPC address."""
    settings = gateway_env(sandbox, tls, tmp_path) | env
    gateway = gateway_process(settings, tmp_path / "gateway.log")
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(settings["GATEWAY_GRPC_ADDR"]) as channel:
            yield pb_grpc.DispatchServiceStub(channel), settings["GATEWAY_GRPC_ADDR"]
    finally:
        await gateway.stop()


async def test_a_cancel_wins_before_the_rate_slot_and_one_is_too_late(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    rate = {"GATEWAY_UPSTREAM_RATE": f"1/{RATE_WINDOW:g}s"}
    async with running_gateway(sandbox, tls, tmp_path, **rate) as (stub, target):
        first = await dispatch(stub)
        waiting = await dispatch(stub)
        behind = await dispatch(stub)

        # Through gRPC at once: the command line takes a second or two to start.
        canceled = await stub.CancelJob(pb.CancelJobRequest(job_id=waiting), timeout=5.0)
        assert (canceled.state, canceled.last_event) == (pb.JOB_STATE_CANCELED, "canceled")
        # Canceling it again returns it.
        code, out, err = await run_cli("jobs", "cancel", waiting, "--target", target)
        assert (code, err) == (0, ""), err
        assert f"job        {waiting}" in out
        assert "state      canceled (last event: canceled)" in out

        assert (await ended(stub, first)).state == pb.JOB_STATE_SUCCEEDED
        code, out, err = await run_cli("jobs", "cancel", first, "--target", target)
        assert code == 1
        assert err.startswith("error: FAILED_PRECONDITION: ")
        assert "has ended (succeeded): too late to cancel" in err

        # The canceled job's slot came and went unused: the job behind it went out after.
        started = time.monotonic()
        assert (await ended(stub, behind)).state == pb.JOB_STATE_SUCCEEDED
        print(
            f"\ncancel e2e: the job behind the canceled one ended after "
            f"{time.monotonic() - started:.1f} s; upstream keys={sent_keys(sandbox)}"
        )
        assert sent_keys(sandbox) == [first, behind]

        events = [e async for e in stub.WatchJob(pb.WatchJobRequest(job_id=waiting), timeout=5.0)]
        assert [(e.type, e.terminal) for e in events] == [
            ("queued", False),
            ("canceled", True),
        ]
        assert events[-1].state == pb.JOB_STATE_CANCELED
        assert dict(events[-1].data) == {"canceled_by": "anonymous"}


async def test_a_refused_job_is_retried_once_its_cause_is_fixed(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    sandbox.sandbox.faults.update({"fail_rate": 1.0})  # the provider's configuration is wrong
    async with running_gateway(sandbox, tls, tmp_path) as (stub, target):
        failed_id = await dispatch(stub)
        failed = await ended(stub, failed_id)
        assert failed.state == pb.JOB_STATE_FAILED
        assert (failed.error.http_status, failed.error.code) == (417, "provider_error")

        sandbox.sandbox.faults.update({"fail_rate": 0.0})  # fixed
        code, out, err = await run_cli("jobs", "retry", failed_id, "--target", target)
        assert (code, err) == (0, ""), err
        match = re.search(r"^job        (job_\w+)$", out, re.MULTILINE)
        assert match, out
        retry_id = match.group(1)
        assert f"retry of   {failed_id}" in out

        retried = await ended(stub, retry_id)
        assert retried.state == pb.JOB_STATE_SUCCEEDED
        again = await stub.RetryJob(pb.RetryJobRequest(job_id=failed_id), timeout=5.0)
        assert again.job_id == retry_id
        old = await stub.GetJob(pb.GetJobRequest(job_id=failed_id), timeout=5.0)
        assert (old.state, old.retried_by) == (pb.JOB_STATE_FAILED, retry_id)
        assert retried.retry_of == failed_id

        # Each attempt went upstream once, under its own job's key.
        requests = [(r.idempotency_key, r.status) for r in sandbox.sandbox.requests]
        print(f"\nretry e2e: upstream requests={requests}")
        assert requests == [(failed_id, 417), (retry_id, 200)]

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RetryJob(pb.RetryJobRequest(job_id=retry_id), timeout=5.0)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is succeeded: only a failed job can be retried" in (info.value.details() or "")
