"""Domain errors to gRPC status codes, with google.rpc details in the trailers: the one table."""

from __future__ import annotations

import json
import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..core.errors import (
    GatewayError,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    RateLimited,
    ShuttingDown,
    SlowConsumer,
    StoreUnavailable,
    UpstreamError,
    WrongState,
)
from .auth import PermissionDenied, Unauthenticated

log = logging.getLogger("dispatcher_gateway.rpc")

_CREDENTIALS_REFUSED = (401, 403)

UPSTREAM_DOMAIN = "docs-dispatcher.io"
"""google.rpc.ErrorInfo.domain of errors that came from the upstream."""

# Upstream answers: google/rpc/code.proto's HTTP mapping, as docs/design.md fixes it; and
# whether the answer is a verdict on the request itself (its content), which Validate reports as
# `valid=false` rather than an error.
_UPSTREAM_HTTP: dict[int, tuple[grpc.StatusCode, bool]] = {
    400: (grpc.StatusCode.INVALID_ARGUMENT, True),
    # The gateway's own credentials or permissions: the caller cannot fix them.
    401: (grpc.StatusCode.INTERNAL, False),
    403: (grpc.StatusCode.INTERNAL, False),
    404: (grpc.StatusCode.NOT_FOUND, True),
    409: (grpc.StatusCode.ALREADY_EXISTS, False),
    415: (grpc.StatusCode.INVALID_ARGUMENT, True),
    417: (grpc.StatusCode.FAILED_PRECONDITION, True),
    429: (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
}

_DOMAIN: dict[type[GatewayError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    IdempotencyConflict: grpc.StatusCode.FAILED_PRECONDITION,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    SlowConsumer: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def domain_code(exc: GatewayError) -> grpc.StatusCode:
    """The status code of a domain error other than UpstreamError (see upstream_code)."""
    return next(
        (c for kind, c in _DOMAIN.items() if isinstance(exc, kind)), grpc.StatusCode.INTERNAL
    )


def upstream_code(exc: UpstreamError) -> grpc.StatusCode:
    status = exc.failure.http_status
    if exc.timeout:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if status in _UPSTREAM_HTTP:
        return _UPSTREAM_HTTP[status][0]
    if status == 0 or status >= 500:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.FAILED_PRECONDITION


def refuses_request(exc: UpstreamError) -> bool:
    """Whether the upstream refused the request for what it says (a verdict on it, final),
    rather than failed to handle it."""
    entry = _UPSTREAM_HTTP.get(exc.failure.http_status)
    return entry is not None and entry[1] and not exc.retryable


def _packed(*details: object) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        packed.append(item)
    return packed


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(0, round(seconds * 1000)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_status(exc: GatewayError) -> grpc.Status:
    """The status (code, message and rich details) a domain error is reported with."""
    text = str(exc)
    details: list[object] = []
    if isinstance(exc, UpstreamError):
        code = upstream_code(exc)
        failure = exc.failure
        reason = failure.code or "upstream_error"
        metadata = {"http_status": str(failure.http_status), "message": failure.message}
        if failure.http_status in _CREDENTIALS_REFUSED:
            # What the upstream said (the account, the address the gateway calls from) is
            # logged by the upstream client; the caller learns it is not their problem.
            log.error(
                "the upstream refused the gateway's own credentials (%d %s): check "
                "DISPATCHER_EMAIL / DISPATCHER_PASSWORD",
                failure.http_status,
                failure.code,
            )
            text = "the gateway is misconfigured: its upstream credentials were refused"
            reason = "upstream_credentials_refused"
            metadata = {"http_status": str(failure.http_status)}
        elif failure.details:
            metadata["body"] = json.dumps(failure.details, sort_keys=True)[:4096]
        details.append(
            error_details_pb2.ErrorInfo(reason=reason, domain=UPSTREAM_DOMAIN, metadata=metadata)
        )
        field = failure.details.get("details", {}) if failure.details else {}
        if (
            code is grpc.StatusCode.INVALID_ARGUMENT
            and isinstance(field, dict)
            and "field" in field
        ):
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=str(field["field"]), description=failure.message
            )
            details.append(error_details_pb2.BadRequest(field_violations=[violation]))
        if exc.retry_after is not None:
            details.append(_retry_info(exc.retry_after))
    else:
        code = domain_code(exc)
        if isinstance(exc, InvalidArgument):
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
        elif isinstance(exc, RateLimited):
            details.append(_retry_info(exc.retry_after))
    status = status_pb2.Status(code=code.value[0], message=text, details=_packed(*details))
    return rpc_status.to_status(status)
