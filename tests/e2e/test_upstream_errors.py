"""Upstream errors reach callers as docs/design.md maps them (google/rpc/code.proto's HTTP mapping),
with the upstream's error body carried as google.rpc.ErrorInfo: the sandbox as a real server,
driven into each error by its faults, a bad request, or the gateway's own wrong password.

409 is not here: every submission carries its own job id as the idempotency key, so the sandbox
cannot honestly answer 409 to the gateway; tests/unit/test_rpc_errors.py covers that row."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from google.rpc import error_details_pb2

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.rpc.errors import UPSTREAM_DOMAIN
from tests.support.loopback import GatewayFactory, RunningSandbox
from tests.support.requests import email_request, status_details

CALL_TIMEOUT = 10.0
WRONG_PASSWORD = "not-the-sandbox-password-4f2a"
UPSTREAM_SAID = "Invalid or missing credentials"
"""The sandbox's 401 message; the real upstream's names the account and the caller's address."""


def sync(**changes: object) -> pb.DispatchRequest:
    return email_request(mode=pb.MODE_SYNC, **changes)


async def refused(
    stub: pb_grpc.DispatchServiceStub, request: pb.DispatchRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Dispatch(request, timeout=CALL_TIMEOUT)
    return info.value


def detail(error: grpc.aio.AioRpcError, kind: type) -> object:
    found = [d for d in status_details(error) if isinstance(d, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {status_details(error)}"
    return found[0]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = detail(error, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.domain == UPSTREAM_DOMAIN
    return info


async def the_only_job(stub: pb_grpc.DispatchServiceStub) -> pb.Job:
    (job,) = (await stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT)).jobs
    return job


async def test_400_is_invalid_argument_naming_the_field(stub: pb_grpc.DispatchServiceStub) -> None:
    error = await refused(stub, sync(provider_name="pigeon"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info.metadata["http_status"] == "400"
    body = json.loads(info.metadata["body"])
    assert body["error"] == info.reason
    assert body["details"]["field"] == "providerName"
    bad_request = detail(error, error_details_pb2.BadRequest)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["providerName"]
    job = await the_only_job(stub)
    assert job.state == pb.JOB_STATE_FAILED
    assert job.error.http_status == 400


async def test_404_is_not_found(stub: pb_grpc.DispatchServiceStub) -> None:
    request = sync()
    request.template.id = 424242
    error = await refused(stub, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert (info.reason, info.metadata["http_status"]) == ("template_not_found", "404")
    assert json.loads(info.metadata["body"])["details"]["value"] == 424242


async def test_417_provider_refusal_is_failed_precondition(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.update({"fail_rate": 1.0})
    error = await refused(stub, sync())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).metadata["http_status"] == "417"


async def test_429_is_resource_exhausted_with_retry_info(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.update({"rate_limit_rate": 1.0, "retry_after": 3.0})
    error = await refused(stub, sync())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "rate_limited"
    retry = detail(error, error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 3


async def test_5xx_is_unavailable(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.update({"error_rate": 1.0})
    error = await refused(stub, sync())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.metadata["http_status"] in {"500", "502", "503"}
    assert json.loads(info.metadata["body"])["error"] == info.reason


@pytest.mark.parametrize("sandbox_options", [{"sync_delay": 3.0}])
async def test_no_answer_within_the_deadline_is_deadline_exceeded(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Dispatch(sync(), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_validate_400_answers_invalid_with_the_upstream_error(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    answer = await stub.Validate(email_request(provider_name="pigeon"), timeout=CALL_TIMEOUT)
    assert not answer.valid
    assert answer.error.http_status == 400
    assert answer.error.details["details"]["field"] == "providerName"


async def test_refused_credentials_are_internal_logged_loudly_without_the_password(
    gateways: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await gateways.start(dispatcher_password=WRONG_PASSWORD)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        with caplog.at_level(logging.DEBUG):
            errors = [await refused(stub, sync())]
            for call in (
                stub.Validate(email_request(), timeout=CALL_TIMEOUT),
                stub.ListTemplates(pb.ListTemplatesRequest(), timeout=CALL_TIMEOUT),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                errors.append(info.value)
        job = await the_only_job(stub)
        job = await stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT)
    for error in errors:
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "credentials" in (error.details() or "")
        assert error_info(error).metadata["http_status"] == "401"
        assert error_info(error).reason == "upstream_credentials_refused"
        trailers = str(error.trailing_metadata()) + str(error.details())
        assert WRONG_PASSWORD not in trailers
        # What the upstream said of the account is the operators', in the log.
        assert UPSTREAM_SAID not in trailers
    assert job.error.message == "the gateway's upstream credentials were refused"
    assert UPSTREAM_SAID not in str(job)
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("credentials" in r.getMessage() for r in loud)
    assert any(UPSTREAM_SAID in r.getMessage() for r in loud)
    assert WRONG_PASSWORD not in caplog.text
