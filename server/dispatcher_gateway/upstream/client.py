"""The httpx client for the Docs-Dispatcher REST API (see docs/upstream.md).

It sends one request per call and classifies what came back; it neither retries (the outbox
does, with the same idempotency key) nor rate-limits (core does, for every replica at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import importlib.metadata
import json
import logging
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from ..core.caller import UPSTREAM_TIMEOUT
from ..core.errors import UpstreamError
from ..core.eventdata import has_utf8_form
from ..core.model import JSON, DispatchSpec, Mode, UpstreamAttempt, UpstreamFailure
from ..core.ports import UpstreamAnswer
from ..tracing import Tracing, continued

logger = logging.getLogger("dispatcher_gateway.upstream")

UPSTREAM_TIMEOUT_CAP = UPSTREAM_TIMEOUT
"""Seconds: the upstream's documented timeout for a synchronous dispatch; waiting longer is moot."""

DEFAULT_CALLBACK_FIELD = "webhookUrl"
"""The body field that carries the callback URL (assumed in docs/upstream.md)."""

DEFAULT_MAX_CONNECTIONS = 100
MAX_REQUEST_ID = 200
"""Characters of the upstream's X-Request-ID kept in a job's attempts."""

TEMPLATES_PATH = "/api/v1/templates"
VALIDATE_SUFFIX = "/validate"

CODE_TIMEOUT = "upstream_timeout"
CODE_UNREACHABLE = "upstream_unreachable"
CODE_BAD_RESPONSE = "upstream_bad_response"
CODE_CREDENTIALS_REFUSED = "upstream_credentials_refused"
CREDENTIALS_REFUSED = "the gateway's upstream credentials were refused"
MAX_LOGGED_MESSAGE = 500
"""Characters of the upstream's error message kept in a log line."""

_CREDENTIALS_REFUSED = (401, 403)


def _version() -> str:
    try:
        return importlib.metadata.version("dispatcher-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"dispatcher-gateway/{_version()}"


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta seconds or an HTTP-date; never negative.

    None when absent or unreadable: a malformed hint is ignored rather than trusted.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate_to_datetime leaves "-0000" naive.
        return None
    return max(0.0, when.timestamp() - now)


def _ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    # httpx 0.28 deprecates verify=<path>; build the context here instead.
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return verify


class DispatcherClient:
    """core.ports.Upstream over HTTPS with Basic Auth, one pooled httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str,
        email: str,
        password: str,
        *,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        callback_field: str = DEFAULT_CALLBACK_FIELD,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        tracing: Tracing | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._email = email
        self._callback_field = callback_field
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            auth=httpx.BasicAuth(email, password),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            verify=_ssl_context(verify),
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=UPSTREAM_TIMEOUT_CAP,
            follow_redirects=False,
            # Proxies and netrc from the environment would change where the credentials go.
            trust_env=False,
        )
        if tracing is not None:
            tracing.instrument_client(self._http)

    def __repr__(self) -> str:
        return f"DispatcherClient(base_url={self._base_url!r}, email={self._email!r})"

    async def __aenter__(self) -> DispatcherClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def close(self) -> None:
        await self.aclose()

    async def dispatch(
        self,
        spec: DispatchSpec,
        *,
        idempotency_key: str,
        callback_url: str | None,
        timeout: float,
        trace_context: str = "",
    ) -> UpstreamAnswer:
        body = dict(spec.body)
        params: dict[str, str] = {}
        mode = Mode.SYNC
        if callback_url is not None:
            mode = Mode.ASYNC
            params["async"] = "true"
            body[self._callback_field] = callback_url
        with continued(trace_context):
            exchange = await self._request(
                "POST",
                spec.path,
                json_body=body,
                params=params,
                idempotency_key=idempotency_key,
                timeout=timeout,
                mode=mode,
            )
        assert exchange.attempt is not None
        try:
            answer = _expect_object(exchange.status, exchange.body)
        except UpstreamError as exc:
            exc.attempt = _failed(exchange.attempt, exc.failure)
            raise
        return UpstreamAnswer(answer, exchange.attempt)

    async def validate(self, spec: DispatchSpec, *, timeout: float) -> JSON:
        exchange = await self._request(
            "POST", spec.path + VALIDATE_SUFFIX, json_body=dict(spec.body), timeout=timeout
        )
        return _expect_object(exchange.status, exchange.body)

    async def templates(self, *, timeout: float) -> list[JSON]:
        exchange = await self._request("GET", TEMPLATES_PATH, timeout=timeout)
        status, answer = exchange.status, exchange.body
        if isinstance(answer, dict):
            answer = answer.get("templates")
        if not isinstance(answer, list) or not all(isinstance(t, dict) for t in answer):
            raise _bad_response(status, "the templates answer is not a list of objects")
        return answer

    async def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        json_body: JSON | None = None,
        params: dict[str, str] | None = None,
        idempotency_key: str = "",
        mode: Mode | None = None,
    ) -> _Exchange:
        """Send one request; the status and parsed JSON of a 2xx answer, else UpstreamError.
        With `mode` (a dispatch), the attempt is described in both."""
        request_id = uuid.uuid4().hex
        headers = {"X-Request-ID": request_id}
        if idempotency_key:
            headers["X-Idempotency-Key"] = idempotency_key
        budget = min(timeout, UPSTREAM_TIMEOUT_CAP)
        sent_at = time.time()
        started = time.monotonic()
        if budget <= 0:
            logger.debug("%s %s not sent: no time left (request id %s)", method, path, request_id)
            raise _timeout_error("the deadline passed before the request was sent")

        def attempt(status: int, answered_id: str = "") -> UpstreamAttempt | None:
            if mode is None:
                return None
            return UpstreamAttempt(
                time=sent_at,
                endpoint=f"{method} {path}",
                mode=mode,
                http_status=status,
                latency=time.monotonic() - started,
                request_id=answered_id or request_id,
            )

        try:
            # httpx's timeout bounds each phase (connect, write, each read); the outer one
            # bounds the whole exchange, which is what the caller's deadline means.
            async with asyncio.timeout(budget):
                response = await self._http.request(
                    method,
                    path,
                    json=json_body,
                    params=params or None,
                    headers=headers,
                    timeout=budget,
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            self._log_no_answer(method, path, request_id, started, "timeout")
            error = _timeout_error(f"no answer within {budget:g} s")
            error.attempt = _failed(attempt(0), error.failure)
            raise error from exc
        except httpx.TransportError as exc:
            self._log_no_answer(method, path, request_id, started, type(exc).__name__)
            failure = UpstreamFailure(
                code=CODE_UNREACHABLE, message=f"{type(exc).__name__}: {exc}", http_status=0
            )
            raise UpstreamError(
                failure, retryable=True, attempt=_failed(attempt(0), failure)
            ) from exc

        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug(
            "%s %s -> %d (request id %s, %.1f ms)",
            method,
            path,
            response.status_code,
            request_id,
            elapsed_ms,
        )
        echoed = response.headers.get("X-Request-ID", "")[:MAX_REQUEST_ID]
        answered = attempt(response.status_code, echoed)
        if response.is_success:
            try:
                return _Exchange(response.status_code, json.loads(response.content), answered)
            except (ValueError, RecursionError) as exc:
                error = _bad_response(response.status_code, "the answer is not JSON")
                error.attempt = _failed(answered, error.failure)
                raise error from exc
        error = self._error_from(response, method, path, request_id)
        error.attempt = _failed(answered, error.failure)
        raise error

    def _error_from(
        self, response: httpx.Response, method: str, path: str, request_id: str
    ) -> UpstreamError:
        status = response.status_code
        try:
            body = json.loads(response.content)
        except (ValueError, RecursionError):
            body = None
        details: JSON = body if isinstance(body, dict) else {}
        code = details.get("error")
        if not isinstance(code, str) or not code or not has_utf8_form(code):
            code = f"http_{status}"
        message = details.get("message")
        if not isinstance(message, str) or not message or not has_utf8_form(message):
            message = response.reason_phrase or f"HTTP {status}"
        failure = UpstreamFailure(code=code, message=message, http_status=status, details=details)
        if status in _CREDENTIALS_REFUSED:
            logger.error(
                "the gateway's Dispatcher credentials were refused: %s %s -> %d %s: %s "
                "(request id %s, user %s)",
                method,
                path,
                status,
                failure.code,
                " ".join(message.split())[:MAX_LOGGED_MESSAGE],
                request_id,
                self._email,
            )
            # What the upstream said names the account and where the gateway calls from: for
            # the log above, not for callers (nor for the job's error, which callers read).
            failure = UpstreamFailure(
                code=CODE_CREDENTIALS_REFUSED, message=CREDENTIALS_REFUSED, http_status=status
            )
        retryable = status == 429 or status >= 500
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
        return UpstreamError(
            failure, retryable=retryable, refused=status < 500, retry_after=retry_after
        )

    @staticmethod
    def _log_no_answer(method: str, path: str, request_id: str, started: float, why: str) -> None:
        logger.debug(
            "%s %s -> no answer: %s (request id %s, %.1f ms)",
            method,
            path,
            why,
            request_id,
            (time.monotonic() - started) * 1000,
        )


@dataclass(frozen=True, slots=True)
class _Exchange:
    status: int
    body: Any
    attempt: UpstreamAttempt | None


def _failed(attempt: UpstreamAttempt | None, failure: UpstreamFailure) -> UpstreamAttempt | None:
    if attempt is None:
        return None
    return dataclasses.replace(attempt, error_code=failure.code)


def _timeout_error(message: str) -> UpstreamError:
    failure = UpstreamFailure(code=CODE_TIMEOUT, message=message, http_status=0)
    return UpstreamError(failure, retryable=True, timeout=True)


def _bad_response(status: int, message: str) -> UpstreamError:
    # Retryable on purpose: the request carried an idempotency key, so sending it again cannot
    # dispatch twice, and a garbled 2xx is more likely a proxy or truncation fault than a verdict.
    # http_status stays 0 (no usable answer), which rpc/errors.py maps to UNAVAILABLE like other
    # transient faults; a 2xx there would read as a client error.
    failure = UpstreamFailure(
        code=CODE_BAD_RESPONSE, message=f"{message} (HTTP {status})", http_status=0
    )
    return UpstreamError(failure, retryable=True)


def _expect_object(status: int, answer: Any) -> JSON:
    if not isinstance(answer, dict):
        raise _bad_response(status, "the answer is not a JSON object")
    return answer
