"""Issue 14's batch, schedule and seek on the gateway as a process of its own, on each store
(SQLite, NATS), through the command line, against the sandbox: a batch of 100 in one call, a
scheduled job sent no earlier than its time across a restart (SIGKILL), and a stream from a
time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.cli import run_cli
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory
from tests.support.process import ServerProcess, gateway_env, gateway_process
from tests.support.requests import email_request

SENT_TIMEOUT = 60.0
CALL_TIMEOUT = 10.0
SCHEDULE_AHEAD = 15.0
"""Seconds ahead the scheduled job is asked for: room for a kill and a restart before it."""
INVALID = {17: "email.to[0].email", 63: "template.id"}


@pytest.fixture(params=["sqlite", "nats"])
async def process(
    request: pytest.FixtureRequest, sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    env = gateway_env(sandbox, tls, tmp_path)
    if request.param == "nats":
        # A server of the test's own: the gateway's streams and buckets under the default names.
        nats: NatsFactory = request.getfixturevalue("start_nats_server")
        env["GATEWAY_STORE"] = nats().url
    gateway = gateway_process(env, tmp_path / "gateway.log")
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


def target(process: ServerProcess) -> str:
    return process.env["GATEWAY_GRPC_ADDR"]


def store_of(process: ServerProcess) -> str:
    return "nats" if process.env["GATEWAY_STORE"].startswith("nats") else "sqlite"


async def requests_for(sandbox: RunningSandbox, job_ids: set[str], timeout: float) -> list[float]:
    """When the sandbox received each request for these jobs, once every job has one."""
    async with asyncio.timeout(timeout):
        while True:
            sent = [r for r in sandbox.sandbox.requests if r.idempotency_key in job_ids]
            if {r.idempotency_key for r in sent} == job_ids:
                return [r.received_at for r in sent]
            await asyncio.sleep(0.05)


async def test_a_batch_of_100_in_one_call_answers_each_item_and_queues_the_valid_ones(
    process: ServerProcess, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    requests = [email_request(metadata={"n": str(i)}) for i in range(100)]
    requests[17].email.to[0].email = "not-an-address"
    requests[63].template.id = 0
    lines = tmp_path / "batch.jsonl"
    lines.write_text("".join(json_format.MessageToJson(r, indent=None) + "\n" for r in requests))

    started = time.monotonic()
    code, out, err = await run_cli("dispatch-batch", "--target", target(process), str(lines))
    took = time.monotonic() - started

    assert code == 2, err
    assert "2 of 100 refused" in err
    results = out.splitlines()
    assert len(results) == 100
    job_ids = set()
    for i, line in enumerate(results):
        number, kind, rest = line.split(maxsplit=2)
        assert number == str(i + 1)
        if i in INVALID:
            assert (kind, rest.split()[0]) == ("error", "INVALID_ARGUMENT:")
            assert rest.split()[1] == f"{INVALID[i]}:"
        else:
            assert kind == "job"
            assert rest.endswith(": queued")
            job_ids.add(rest.split(":")[0])
    assert len(job_ids) == 98
    received = await requests_for(sandbox, job_ids, SENT_TIMEOUT)
    assert len(received) == 98  # each once
    print(
        f"{store_of(process)}: batch of 100: 98 queued, 2 refused, CLI run {took:.2f} s; "
        "all 98 sent upstream once"
    )


async def test_a_scheduled_job_is_sent_no_earlier_than_its_time_across_a_restart(
    process: ServerProcess, sandbox: RunningSandbox
) -> None:
    not_before = datetime.fromtimestamp(round(time.time() + SCHEDULE_AHEAD), UTC)
    at = not_before.isoformat().replace("+00:00", "Z")
    code, out, err = await run_cli(
        "dispatch", "--target", target(process), "--to", "ada@example.com", "--not-before", at
    )
    assert code == 0, err
    job_id = out.split()[1].rstrip(":")

    await process.kill()
    killed = time.time()
    await process.start()
    restarted = time.time()
    code, out, err = await run_cli("jobs", "--target", target(process), "--json", job_id)
    assert code == 0, err
    job = json.loads(out.splitlines()[0])
    assert (job["state"], job["notBefore"]) == ("JOB_STATE_QUEUED", at)
    assert restarted < not_before.timestamp()  # the restart came before the job's time

    [received] = await requests_for(sandbox, {job_id}, SCHEDULE_AHEAD + SENT_TIMEOUT)
    await asyncio.sleep(1.0)  # and no second request
    assert len([r for r in sandbox.sandbox.requests if r.idempotency_key == job_id]) == 1
    assert received >= not_before.timestamp()
    print(
        f"{store_of(process)}: scheduled for {at}: gateway killed "
        f"{not_before.timestamp() - killed:.1f} s before, "
        f"back {not_before.timestamp() - restarted:.1f} s before; the sandbox received it "
        f"{received - not_before.timestamp():.3f} s after its time"
    )


@contextlib.asynccontextmanager
async def cli_lines(*args: str) -> AsyncIterator[asyncio.StreamReader]:
    """A command that runs until the test is done with its output."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher_gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert cli.stdout is not None
    try:
        yield cli.stdout
    finally:
        cli.kill()
        await cli.wait()


async def test_watch_since_a_time_prints_exactly_the_events_recorded_since_then(
    process: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(target(process)) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)

        async def ended() -> str:
            job = (await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)).job
            async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
                if event.terminal:
                    break
            return job.job_id

        async with asyncio.timeout(SENT_TIMEOUT):
            before = [await ended() for _ in range(3)]
            await asyncio.sleep(0.2)
            since = datetime.now(UTC)
            await asyncio.sleep(0.2)
            after = [await ended() for _ in range(2)]
            stamp = since.isoformat().replace("+00:00", "Z")
            async with cli_lines(
                "watch", "--target", target(process), "--json", "--since", stamp
            ) as lines:
                got = [json.loads(await lines.readline()) for _ in range(4)]
                live = await ended()
                got += [json.loads(await lines.readline()) for _ in range(2)]

    assert [(e["jobId"], e["type"]) for e in got] == [
        (job_id, kind) for job_id in (*after, live) for kind in ("queued", "dispatch_completed")
    ]
    assert not {e["jobId"] for e in got} & set(before)
    print(
        f"{store_of(process)}: watch --since {stamp}: {len(got)} events, the 6 of the jobs "
        "since then, none before"
    )
