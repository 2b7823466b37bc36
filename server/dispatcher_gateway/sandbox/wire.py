"""The HTTP wire of the sandbox's API: reading a request (its body, mode, path, request id) and
writing an answer or an error in the upstream's error shape."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .catalog import SERVICES
from .errors import ApiError
from .idempotency import Answer

MAX_BODY_BYTES = 1 << 20
"""A request body above this is refused with 413."""

HEADER_REPLAYED = "X-Idempotent-Replayed"


def request_id(request: Request) -> str:
    """The X-Request-ID the request is answered with (set by edge.py)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(error: ApiError, path: str, request_id: str) -> Response:
    return JSONResponse(
        error.body(path=path, request_id=request_id), error.status, headers=error.headers
    )


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, request.url.path, request_id(request))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "endpoint_not_found", f"No endpoint {request.url.path[:200]}")
    elif exc.status_code == 405:
        error = ApiError(405, "method_not_allowed", f"{request.method} is not allowed here")
    else:
        error = ApiError(exc.status_code, "http_error", str(exc.detail))
    error.headers.update(exc.headers or {})
    return error_response(error, request.url.path, request_id(request))


def respond(answer: Answer, request: Request, *, replayed: bool) -> Response:
    headers = {HEADER_REPLAYED: "true"} if replayed else None
    if answer.error is not None:
        response = error_response(answer.error, request.url.path, request_id(request))
        if headers:
            response.headers.update(headers)
        return response
    return JSONResponse(answer.body, answer.status, headers=headers)


def services(segments: list[str], path: str) -> tuple[str, ...]:
    """The chain a path names (/api/file/email), or 404: every segment a service, none twice."""
    known = bool(segments) and all(s in SERVICES for s in segments)
    if not known or len(set(segments)) != len(segments):
        raise ApiError(404, "endpoint_not_found", f"No endpoint {path[:200]}")
    return tuple(segments)


def asks_async(request: Request) -> bool:
    """What the request asked for, as the request log shows it, even when refused."""
    return request.query_params.get("async", "").lower() == "true"


def async_mode(request: Request) -> bool:
    value = request.query_params.get("async")
    if value is None:
        return False
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise ApiError(
            400,
            "invalid_parameter",
            "async must be true or false",
            field="async",
            value=value,
            expected="true|false",
        )
    return lowered == "true"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "Content-Type must be application/json",
            field="Content-Type",
            value=media_type,
            expected="application/json",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    raw = b""
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise _too_large()
    except ClientDisconnect:
        # The client gave up (its timeout) before sending the whole body: nothing to process.
        raise ApiError(400, "client_disconnected", "The client went away mid-request") from None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON") from None


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"The body exceeds {MAX_BODY_BYTES} bytes")
