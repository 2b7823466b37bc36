"""The gateway as a process: SIGTERM drains as promised; the command line's own calls work."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.cli import run_cli
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.ports import free_port
from tests.support.process import START_TIMEOUT, ServerProcess, gateway_env, gateway_process
from tests.support.requests import email_request


@pytest.fixture
async def process(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    env = gateway_env(sandbox, tls, tmp_path)
    gateway = gateway_process(env, tmp_path / "gateway.log")
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


def target(process: ServerProcess) -> str:
    return process.env["GATEWAY_GRPC_ADDR"]


@pytest.mark.parametrize("sandbox_options", [{"sync_delay": 1.5}])
async def test_sigterm_drains(process: ServerProcess, sandbox: RunningSandbox) -> None:
    async with grpc.aio.insecure_channel(target(process)) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        statuses = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await statuses.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stream = stub.Subscribe(pb.SubscribeRequest())
        in_flight = asyncio.ensure_future(
            stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=20)
        )
        async with asyncio.timeout(START_TIMEOUT):  # the sync call now waits on the sandbox
            while not sandbox.sandbox.stats().dispatch_requests:
                await asyncio.sleep(0.01)
        exited = asyncio.ensure_future(process.terminate())

        # Health turns NOT_SERVING first.
        update = await asyncio.wait_for(statuses.read(), 5)
        assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The open stream ends with a resumable UNAVAILABLE naming where to resume.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in stream:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "resume" in (ended.value.details() or "")
        # New calls are refused.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Dispatch(email_request(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The call in flight finished.
        response = await in_flight
        assert response.job.state == pb.JOB_STATE_SUCCEEDED
        assert await exited == 0
    assert "drained" in process.log()


async def test_cli_dispatch_watch_shows_the_job_to_its_end(process: ServerProcess) -> None:
    code, out, err = await run_cli(
        "dispatch",
        "--target",
        target(process),
        "--service",
        "email",
        "--to",
        "ada@example.com",
        "--subject",
        "Hello",
        "--template",
        "1",
        "--watch",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("job job_")
    assert lines[0].endswith(": queued")
    types = [line.split()[2] for line in lines[1:]]
    assert types == ["queued", "dispatch_completed"]
    assert lines[-1].endswith("succeeded  (terminal)")


async def test_cli_jobs_shows_a_job_with_its_upstream_attempts(
    process: ServerProcess, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.update({"refuse_next": [503], "retry_after": 0.0})
    code, out, err = await run_cli(
        "dispatch",
        "--target",
        target(process),
        "--service",
        "sms",
        "--to",
        "+33600000000",
        "--text",
        "Hi",
        "--template",
        "2",
        "--watch",
    )
    assert code == 0, err
    job_id = out.splitlines()[0].split()[1].rstrip(":")

    code, out, err = await run_cli("jobs", "--target", target(process), job_id)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"job        {job_id}"
    assert "service    sms (async)" in lines
    assert "attempts   2" in lines
    sent = [r for r in sandbox.sandbox.requests if r.idempotency_key == job_id]
    assert [r.status for r in sent] == [503, 200]
    first, second = lines[-2:]
    for line, request in zip((first, second), sent, strict=True):
        assert "POST /api/sms" in line
        assert f" {request.status} " in line
        assert f"request {request.request_id}" in line
    assert first.endswith("service_unavailable")


async def test_cli_refuses_bad_input_with_a_clear_error(process: ServerProcess) -> None:
    code, _, err = await run_cli(
        "dispatch", "--target", target(process), "--service", "email", "--template", "0"
    )
    assert code == 1
    assert err.startswith("error: INVALID_ARGUMENT: ")
    assert "template.id" in err


async def test_bad_configuration_is_one_line_per_value(tmp_path: Path) -> None:
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher_gateway",
        "serve",
        env={"PATH": "/usr/bin:/bin", "GATEWAY_PUBLIC_URL": "http://example.com"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(cli.communicate(), 30)
    assert cli.returncode == 2
    lines = err.decode().splitlines()
    assert "config: GATEWAY_PUBLIC_URL: must be https, got http scheme" in lines
    assert "config: DISPATCHER_PASSWORD: required (or DISPATCHER_PASSWORD_FILE)" in lines
    # Nobody could call: refused, not started with every caller anonymous.
    assert any(line.startswith("config: GATEWAY_CLIENT_TOKENS_FILE: no caller") for line in lines)
    assert any(line.startswith("config: GATEWAY_GRPC_ADDR: 0.0.0.0:50051 is") for line in lines)


async def test_sandbox_mode_lets_anonymous_callers_in_and_says_so(tmp_path: Path) -> None:
    grpc_addr = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "GATEWAY_GRPC_ADDR": grpc_addr,
        "GATEWAY_WEBHOOK_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_HTTP_ADDR": f"127.0.0.1:{free_port()}",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as errors:
        serve = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher_gateway",
            "serve",
            "--sandbox",
            cwd=tmp_path,  # its store and local CA go under data/
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    try:
        assert serve.stdout is not None
        banner: list[str] = []
        async with asyncio.timeout(START_TIMEOUT):
            while not banner or not banner[-1].startswith("In another terminal"):
                line = await serve.stdout.readline()
                assert line, f"serve --sandbox exited: {log.read_text()}"
                banner.append(line.decode().rstrip())
        [access] = [line for line in banner if line.strip().startswith("access")]
        assert "ANONYMOUS ACCESS ON" in access
        assert "reflection on" in "\n".join(banner)
        async with grpc.aio.insecure_channel(grpc_addr) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            listed = await stub.ListJobs(pb.ListJobsRequest(), timeout=10)
            assert list(listed.jobs) == []
    finally:
        serve.send_signal(signal.SIGTERM)
        await asyncio.wait_for(serve.wait(), START_TIMEOUT)
