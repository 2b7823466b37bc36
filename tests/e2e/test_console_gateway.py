"""The console inside a real gateway (in process, against the sandbox): its live feed carries
every client's events as the hub publishes them, a drain ends the pages' streams, and its
actions are core's CancelJob and RetryJob, logged with who did them."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from grpc import aio

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.console.operators import hash_password
from dispatcher_gateway.console.settings import ConsoleSettings
from dispatcher_gateway.core.retry import RateLimit
from tests.support.loopback import GatewayFactory, RunningSandbox, TlsFiles
from tests.support.ports import free_port
from tests.support.process import gateway_env, gateway_process
from tests.support.requests import email_request

WAIT = 20.0


async def test_the_feed_carries_a_jobs_events_and_a_drain_ends_it(
    gateways: GatewayFactory,
) -> None:
    app = await gateways.start(console=ConsoleSettings(addr="127.0.0.1:0", auth=False))
    assert app.listeners is not None
    assert app.listeners.console is not None
    url = app.listeners.console.url
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
        await client.get("/")  # the sandbox's session cookie
        async with client.stream("GET", "/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            async with aio.insecure_channel(gateways.target) as channel:
                job = (await pb_grpc.DispatchServiceStub(channel).Dispatch(email_request())).job
            seen: list[str] = []
            async with asyncio.timeout(WAIT):
                async for line in lines:
                    if line.startswith("data: "):
                        event = json.loads(line.removeprefix("data: "))
                        if event["job_id"] == job.job_id:
                            seen.append(event["type"])
                            if event["terminal"]:
                                break
            assert seen[0] == "queued"
            assert seen[-1] == "dispatch_completed"

            drain = asyncio.create_task(gateways.stop(app))
            async with asyncio.timeout(WAIT):
                rest = [line async for line in lines]
            await drain
    assert not [line for line in rest if line.startswith("data: ")]


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def csrf_of(client: httpx.AsyncClient, path: str) -> str:
    found = CSRF.search((await client.get(path)).text)
    assert found is not None
    return found.group(1)


async def test_the_console_cancels_and_retries_through_core(
    gateways: GatewayFactory, sandbox: RunningSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dispatcher_gateway.console")
    # One request a minute: the first job takes the slot, the second waits for the next one.
    app = await gateways.start(
        console=ConsoleSettings(addr="127.0.0.1:0", auth=False), upstream_rate=RateLimit(1, 60.0)
    )
    assert app.listeners is not None
    assert app.listeners.console is not None
    sandbox.sandbox.faults.update({"fail_rate": 1.0})  # the provider refuses: 417
    async with (
        aio.insecure_channel(gateways.target) as channel,
        httpx.AsyncClient(base_url=app.listeners.console.url, timeout=WAIT) as console,
    ):
        stub = pb_grpc.DispatchServiceStub(channel)
        failed = (await stub.Dispatch(email_request())).job.job_id
        waiting = (await stub.Dispatch(email_request())).job.job_id
        async with asyncio.timeout(WAIT):
            while (await stub.GetJob(pb.GetJobRequest(job_id=failed))).state != (
                pb.JOB_STATE_FAILED
            ):
                await asyncio.sleep(0.05)

        csrf = await csrf_of(console, f"/jobs/{waiting}")
        answer = await console.post(f"/jobs/{waiting}/cancel", data={"csrf": csrf})
        assert answer.status_code == 303
        assert (await stub.GetJob(pb.GetJobRequest(job_id=waiting))).state == (
            pb.JOB_STATE_CANCELED
        )
        # Too late now: core's refusal, shown as it words it.
        again = await console.post(f"/jobs/{failed}/cancel", data={"csrf": csrf})
        assert again.status_code == 409
        assert "too late to cancel" in again.text

        sandbox.sandbox.faults.update({"fail_rate": 0.0})
        answer = await console.post(
            "/failed/retry", data={"csrf": csrf, "code": "provider_error", "hours": "1"}
        )
        assert answer.status_code == 200
        old = await stub.GetJob(pb.GetJobRequest(job_id=failed))
        assert old.retried_by
        assert f"/jobs/{old.retried_by}" in answer.text
        new = await stub.GetJob(pb.GetJobRequest(job_id=old.retried_by))
        assert new.retry_of == failed
    lines = [r.getMessage() for r in caplog.records]
    assert f"console: operator sandbox did cancel on job {waiting} (client anonymous)" in lines
    assert (
        f"console: operator sandbox did retry on job {failed} (client anonymous): "
        f"new job {old.retried_by}" in lines
    )


CONNECTIONS = 32
"""New connections to the console of two workers: the kernel picks each one's worker by a hash,
so all 32 on one worker is a 1 in 2**31 chance."""


async def test_a_login_holds_on_every_worker(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    operators = tmp_path / "operators"
    operators.write_text(f"ops {hash_password('pw')}\n")
    env = gateway_env(sandbox, tls, tmp_path) | {
        "GATEWAY_WORKERS": "2",
        "GATEWAY_CONSOLE_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_CONSOLE_OPERATORS_FILE": str(operators),
    }
    process = gateway_process(env, tmp_path / "gateway.log")
    url = f"http://{env['GATEWAY_CONSOLE_ADDR']}"
    try:
        await process.start()
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            csrf = await csrf_of(client, "/login")
            answer = await client.post(
                "/login", data={"csrf": csrf, "operator": "ops", "password": "pw"}
            )
            assert answer.status_code == 303
            cookies = client.cookies
        answers = []
        for _ in range(CONNECTIONS):
            async with httpx.AsyncClient(base_url=url, cookies=cookies, timeout=WAIT) as fresh:
                answers.append((await fresh.get("/")).status_code)
        assert answers == [200] * CONNECTIONS
        # Both workers serve the console's port: none failed to bind it and was restarted.
        assert "starting it again" not in process.log()
    finally:
        await process.stop()
