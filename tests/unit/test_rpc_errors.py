"""rpc/errors.to_status: every domain error and every upstream answer to its gRPC status, with the
google.rpc details docs/design.md promises."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from dispatcher_gateway.core.errors import (
    FieldViolation,
    GatewayError,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    RateLimited,
    ShuttingDown,
    SlowConsumer,
    StoreUnavailable,
    UpstreamError,
)
from dispatcher_gateway.core.model import UpstreamFailure
from dispatcher_gateway.rpc.auth import PermissionDenied, Unauthenticated
from dispatcher_gateway.rpc.errors import UPSTREAM_DOMAIN, refuses_request, to_status

Code = grpc.StatusCode

DETAIL_KINDS = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
)


def details(status: grpc.Status) -> list[object]:
    """The google.rpc details packed in the status's trailers."""
    (key, raw), *_ = status.trailing_metadata  # type: ignore[attr-defined]
    assert key == "grpc-status-details-bin"
    found: list[object] = []
    for item in status_pb2.Status.FromString(raw).details:
        assert isinstance(item, any_pb2.Any)
        for kind in DETAIL_KINDS:
            if item.Is(kind.DESCRIPTOR):
                message = kind()
                item.Unpack(message)
                found.append(message)
    return found


def upstream(
    status: int,
    *,
    code: str = "some_error",
    retryable: bool = False,
    timeout: bool = False,
    retry_after: float | None = None,
    body: dict[str, object] | None = None,
) -> UpstreamError:
    failure = UpstreamFailure(code, f"the upstream said {code}", status, body or {})
    return UpstreamError(failure, retryable=retryable, timeout=timeout, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument([FieldViolation("template.id", "required")]), Code.INVALID_ARGUMENT),
        (NotFound("job 'x' not found"), Code.NOT_FOUND),
        (IdempotencyConflict("key reused"), Code.FAILED_PRECONDITION),
        (RateLimited("used up", retry_after=3.0), Code.RESOURCE_EXHAUSTED),
        (StoreUnavailable("down"), Code.UNAVAILABLE),
        (ShuttingDown("draining"), Code.UNAVAILABLE),
        (SlowConsumer("behind"), Code.RESOURCE_EXHAUSTED),
        (GatewayError("anything else"), Code.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_domain_errors(error: GatewayError, code: grpc.StatusCode) -> None:
    assert to_status(error).code == code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (upstream(400), Code.INVALID_ARGUMENT),
        (upstream(401), Code.INTERNAL),
        (upstream(403), Code.INTERNAL),
        (upstream(404), Code.NOT_FOUND),
        (upstream(409), Code.ALREADY_EXISTS),
        (upstream(415), Code.INVALID_ARGUMENT),
        (upstream(417), Code.FAILED_PRECONDITION),
        (upstream(422), Code.FAILED_PRECONDITION),
        (upstream(429, retryable=True, retry_after=2.0), Code.RESOURCE_EXHAUSTED),
        (upstream(500, retryable=True), Code.UNAVAILABLE),
        (upstream(502, retryable=True), Code.UNAVAILABLE),
        (upstream(503, retryable=True), Code.UNAVAILABLE),
        (upstream(0, code="upstream_unreachable", retryable=True), Code.UNAVAILABLE),
        (
            upstream(0, code="upstream_timeout", retryable=True, timeout=True),
            Code.DEADLINE_EXCEEDED,
        ),
    ],
    ids=lambda v: (
        str(v.failure.http_status) + v.failure.code if isinstance(v, UpstreamError) else ""
    ),
)
def test_upstream_answers_follow_the_http_mapping(
    error: UpstreamError, code: grpc.StatusCode
) -> None:
    assert to_status(error).code == code


def test_upstream_error_body_travels_as_error_info() -> None:
    body = {"error": "template_not_found", "message": "Template 9 not found", "requestId": "r1"}
    status = to_status(upstream(404, code="template_not_found", body=body))
    (info,) = details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "template_not_found"
    assert info.domain == UPSTREAM_DOMAIN
    assert info.metadata["http_status"] == "404"
    assert json.loads(info.metadata["body"]) == body


def test_upstream_400_names_the_field_as_a_violation() -> None:
    body = {"error": "invalid_field", "details": {"field": "providerName", "value": "pigeon"}}
    status = to_status(upstream(400, code="invalid_field", body=body))
    info, bad_request = details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["providerName"]


def test_upstream_429_carries_retry_info() -> None:
    status = to_status(upstream(429, code="rate_limited", retryable=True, retry_after=2.5))
    info, retry = details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 2500


def test_our_rate_limit_carries_retry_info() -> None:
    (retry,) = details(to_status(RateLimited("used up", retry_after=0.25)))
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 250


def test_invalid_argument_lists_every_violation() -> None:
    error = InvalidArgument(
        [FieldViolation("template.id", "required"), FieldViolation("email", "x")]
    )
    (bad_request,) = details(to_status(error))
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("template.id", "required"),
        ("email", "x"),
    ]


@pytest.mark.parametrize("http_status", [401, 403])
def test_refused_credentials_are_internal_logged_loudly_and_not_blamed_on_the_caller(
    http_status: int, caplog: pytest.LogCaptureFixture
) -> None:
    said = "Bad credentials for account ops@example.com from 203.0.113.7"
    body = {"error": "unauthorized", "message": said, "path": "/api/email"}
    error = upstream(http_status, code="unauthorized", body=body)
    error.failure = UpstreamFailure("unauthorized", said, http_status, body)
    with caplog.at_level(logging.ERROR, logger="dispatcher_gateway.rpc"):
        status = to_status(error)
    assert status.code == Code.INTERNAL
    assert "misconfigured" in status.details  # type: ignore[attr-defined]
    assert any(
        r.levelno == logging.ERROR and "credentials" in r.getMessage() for r in caplog.records
    )
    # The upstream's words name the account and the gateway's address: not for callers.
    (info,) = details(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "upstream_credentials_refused"
    assert dict(info.metadata) == {"http_status": str(http_status)}
    assert "203.0.113.7" not in str(status)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unauthenticated("unknown bearer token"), Code.UNAUTHENTICATED),
        (PermissionDenied("client 'a' may not use service sms"), Code.PERMISSION_DENIED),
    ],
    ids=["unauthenticated", "permission-denied"],
)
def test_who_may_call_what(error: GatewayError, code: grpc.StatusCode) -> None:
    status = to_status(error)
    assert (status.code, status.details) == (code, str(error))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (upstream(400), True),
        (upstream(404), True),
        (upstream(415), True),
        (upstream(417), True),
        (upstream(401), False),
        (upstream(403), False),
        (upstream(409), False),
        (upstream(422), False),
        (upstream(429, retryable=True), False),
        (upstream(503, retryable=True), False),
        (upstream(0, retryable=True, timeout=True), False),
    ],
    ids=lambda v: str(v.failure.http_status) if isinstance(v, UpstreamError) else str(v),
)
def test_validate_answers_invalid_only_for_a_verdict_on_the_request(
    error: UpstreamError, verdict: bool
) -> None:
    assert refuses_request(error) is verdict
