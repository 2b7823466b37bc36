"""GATEWAY_LOG_FORMAT=json on real gateway processes: every line of their output is one JSON
object with its fields (the job, client and dispatch when known), and no secret is in any line
under bad webhook signatures, bad client tokens, refused upstream credentials and upstream
errors."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core.tokens import CallbackTokens
from dispatcher_gateway.rpc.clients import client_line
from tests.support.loopback import (
    SANDBOX_EMAIL,
    SANDBOX_PASSWORD,
    WEBHOOK_SECRET,
    RunningSandbox,
    TlsFiles,
)
from tests.support.process import ServerProcess, gateway_env, gateway_process
from tests.support.requests import request_for

pytestmark = pytest.mark.slow

WAIT = 20.0
TOKEN = "dgw_json-logs-client-token-0123456789abcdef"
WRONG_TOKEN = "dgw_json-logs-wrong-token-fedcba9876543210"
WRONG_PASSWORD = "json-logs-wrong-upstream-password"
TOKEN_KEY = "json-logs-callback-token-key-0123456789abcdef"
FIELDS = ("time", "level", "logger", "message")


def lines_of(log: Path) -> list[dict[str, Any]]:
    """Every line of the process's output as a JSON object; fails on the first that is not."""
    records = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        record = json.loads(line)
        assert isinstance(record, dict), f"line {number}: {line}"
        assert all(name in record for name in FIELDS), f"line {number}: {line}"
        records.append(record)
    return records


async def start(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, **env: str
) -> ServerProcess:
    tmp_path.mkdir()
    clients = tmp_path / "clients"
    clients.write_text(client_line("alice", TOKEN) + "\n")
    process = gateway_process(
        {
            **gateway_env(sandbox, tls, tmp_path),
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_ALLOW_ANONYMOUS": "false",
            "GATEWAY_CLIENT_TOKENS_FILE": str(clients),
            "GATEWAY_TOKEN_KEY": TOKEN_KEY,
            **env,
        },
        tmp_path / "gateway.log",
    )
    await process.start()
    return process


async def until_ended(stub: pb_grpc.DispatchServiceStub, job_id: str) -> pb.Job:
    async with asyncio.timeout(WAIT):
        while True:
            job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=BEARER, timeout=5)
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
                return job
            await asyncio.sleep(0.05)


BEARER = (("authorization", f"Bearer {TOKEN}"),)


async def test_json_lines_carry_their_fields_and_no_secret(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    good = await start(sandbox, tls, tmp_path / "good")
    refused = await start(sandbox, tls, tmp_path / "refused", DISPATCHER_PASSWORD=WRONG_PASSWORD)
    try:
        target = good.env["GATEWAY_GRPC_ADDR"]
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            # Upstream errors first: the job is retried through them, then ends by webhook.
            sandbox.sandbox.faults.refuse_next = [500, 503, 429]
            response = await stub.Dispatch(
                request_for(pb.SERVICE_ESIGN), metadata=BEARER, timeout=10
            )
            job_id = response.job.job_id
            job = await until_ended(stub, job_id)
            assert job.state == pb.JOB_STATE_SUCCEEDED
            # A caller with a token the gateway does not know.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Dispatch(
                    request_for(pb.SERVICE_EMAIL),
                    metadata=(("authorization", f"Bearer {WRONG_TOKEN}"),),
                    timeout=10,
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

        # Webhooks to the job's own callback URL with bad signatures.
        callback_token = CallbackTokens(TOKEN_KEY.encode()).token(job_id)
        body = json.dumps({"event": "document_signed", "data": {}}).encode()
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=tls.ca)) as http:
            for headers in (
                {
                    "webhook-id": "msg_1",
                    "webhook-timestamp": str(int(time.time())),
                    "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl",
                },
                {"X-Webhook-Signature": "sha256=00ff", "X-Webhook-Timestamp": "1"},
                {},
            ):
                answer = await http.post(
                    f"{good.env['GATEWAY_PUBLIC_URL']}/webhooks/dispatcher/{callback_token}",
                    content=body,
                    headers={"Content-Type": "application/json", **headers},
                )
                assert answer.status_code == 401

        # The gateway whose upstream credentials are refused: its job fails.
        async with grpc.aio.insecure_channel(refused.env["GATEWAY_GRPC_ADDR"]) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            response = await stub.Dispatch(
                request_for(pb.SERVICE_ESIGN), metadata=BEARER, timeout=10
            )
            job = await until_ended(stub, response.job.job_id)
            assert job.error.code == "upstream_credentials_refused"
    finally:
        await good.stop()
        await refused.stop()

    good_lines = lines_of(good.log_path)
    refused_lines = lines_of(refused.log_path)
    # The fields: the job's lines name it, its client and (once known) its dispatch.
    about_job = [r for r in good_lines if r.get("job_id") == job_id]
    assert any(r.get("client") == "alice" for r in about_job), about_job
    assert any(r.get("dispatch_id") for r in about_job), about_job
    assert any(r["level"] == "WARNING" and "401 unauthorized" in r["message"] for r in good_lines)
    assert any(r["level"] == "ERROR" for r in refused_lines)

    basic = base64.b64encode(f"{SANDBOX_EMAIL}:{SANDBOX_PASSWORD}".encode()).decode()
    wrong_basic = base64.b64encode(f"{SANDBOX_EMAIL}:{WRONG_PASSWORD}".encode()).decode()
    secrets = (
        SANDBOX_PASSWORD,
        WRONG_PASSWORD,
        basic,
        wrong_basic,
        WEBHOOK_SECRET,
        TOKEN,
        WRONG_TOKEN,
        TOKEN_KEY,
        callback_token,
    )
    for path in (good.log_path, refused.log_path):
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, (path.name, secret)
