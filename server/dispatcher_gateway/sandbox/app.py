"""The sandbox: the Docs-Dispatcher REST API of DISPATCHER_API.md as a Starlette app, with its
webhooks, fault injection, and a /_sandbox/ side door for statistics and control."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import email.utils
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..httpserver import HttpServer, start_http
from .catalog import DEFAULT_PROVIDERS, PROVIDERS, SERVICES, TEMPLATES, new_id, provider_result
from .delivery import WebhookSender, iso_now
from .errors import ApiError, invalid
from .events import callback_target, plan_events
from .records import DispatchRecord, RequestRecord, SandboxStats, WebhookRecord
from .settings import Faults, SandboxSettings
from .validation import CheckedRequest, check_request

JSON = dict[str, Any]

MAX_BODY_BYTES = 1 << 20
"""A request body above this is refused with 413."""

MAX_IDEMPOTENCY_KEY = 255
MAX_REQUEST_ID = 200

HEADER_REQUEST_ID = "X-Request-ID"
HEADER_IDEMPOTENCY_KEY = "X-Idempotency-Key"
HEADER_REPLAYED = "X-Idempotent-Replayed"

API_PREFIX = "/api/"
SIDE_DOOR_PREFIX = "/_sandbox/"
OPEN_PATHS = frozenset({"/healthz"})
VALIDATE_SEGMENT = "validate"
VERSIONED_SEGMENT = "v1"

SERVER_ERRORS: tuple[tuple[int, str, str], ...] = (
    (500, "internal_error", "An internal error occurred"),
    (502, "bad_gateway", "The provider could not be reached"),
    (503, "service_unavailable", "The service is temporarily unavailable"),
)

_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def is_dispatch_request(method: str, path: str) -> bool:
    """POST /api/{service...}, the requests the faults and the statistics are about."""
    if method != "POST" or not path.startswith(API_PREFIX):
        return False
    segments = path.removeprefix(API_PREFIX).split("/")
    return segments[0] != VERSIONED_SEGMENT and segments[-1] != VALIDATE_SEGMENT


@dataclass(frozen=True, slots=True)
class _Answer:
    """What a processed dispatch request was answered, kept for replays of its key."""

    status: int
    body: JSON | None = None
    error: ApiError | None = None
    dispatch_id: str | None = None


@dataclass(slots=True)
class _Remembered:
    fingerprint: str
    answer: asyncio.Future[_Answer]


class Sandbox:
    """A stand-in for the Docs-Dispatcher API. Serve `app` (see serve_sandbox), read `stats()`,
    `requests` and `dispatches`, change `faults`, and `await close()` to cancel the webhook
    deliveries it owns."""

    def __init__(
        self,
        settings: SandboxSettings,
        *,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._faults = dataclasses.replace(
            settings.faults, refuse_next=list(settings.faults.refuse_next)
        )
        self._rng = random.Random(settings.seed)
        self._sender = WebhookSender(
            settings, lambda: self._faults, self._rng, transport=webhook_transport
        )
        self._records: dict[str, DispatchRecord] = {}
        self._idempotency: dict[str, _Remembered] = {}
        self._request_log: list[RequestRecord] = []
        self._by_status: collections.Counter[int] = collections.Counter()
        self._arrivals: collections.deque[float] = collections.deque()
        self._max_in_window = 0
        self._closing = asyncio.Event()
        self.app: Starlette = self._build_app()

    def __repr__(self) -> str:
        return f"Sandbox(email={self.settings.email!r}, dispatches={len(self._records)})"

    # Python side of the side door

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._faults = value

    def stats(self) -> SandboxStats:
        counters = self._sender.counters
        return SandboxStats(
            dispatches=len(self._records),
            dispatch_requests=len(self._request_log),
            by_status=dict(self._by_status),
            max_in_window=self._max_in_window,
            webhooks_sent=counters.sent,
            webhooks_delivered=counters.delivered,
            webhooks_failed=counters.failed,
            webhooks_given_up=counters.given_up,
            webhooks_pending=counters.pending,
        )

    def get_dispatch(self, dispatch_id: str) -> DispatchRecord | None:
        return self._records.get(dispatch_id)

    @property
    def dispatches(self) -> list[DispatchRecord]:
        return list(self._records.values())

    @property
    def requests(self) -> list[RequestRecord]:
        """Every dispatch request received, in the order they arrived, whatever they were
        answered (429s, 5xx faults and auth failures included)."""
        return list(self._request_log)

    async def wait_for_webhooks(self, timeout: float) -> None:
        """Until every webhook delivery is answered 2xx or given up; TimeoutError otherwise."""
        await self._sender.wait_idle(timeout)

    async def close(self) -> None:
        """Cancel the deliveries in flight and answer any held-back request at once."""
        self._closing.set()
        await self._sender.close()

    # bookkeeping the edge middleware calls

    def _note_arrival(self, entry: RequestRecord) -> None:
        now = time.monotonic()
        self._request_log.append(entry)
        self._arrivals.append(now)
        while self._arrivals and self._arrivals[0] <= now - self.settings.rate_window:
            self._arrivals.popleft()
        self._max_in_window = max(self._max_in_window, len(self._arrivals))

    def _note_status(self, entry: RequestRecord, status: int) -> None:
        entry.status = status
        self._by_status[status] += 1

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        # Both compared in full whatever the first says, so timing tells nothing.
        user_ok = hmac.compare_digest(user.encode(), self.settings.email.encode())
        password_ok = hmac.compare_digest(password.encode(), self.settings.password.encode())
        return user_ok and password_ok

    # the app

    def _build_app(self) -> Starlette:
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/api/v1/templates", self._templates, methods=["GET"]),
            Route("/api/v1/templates/{template_id}", self._template, methods=["GET"]),
            Route("/api/v1/my/config", self._config, methods=["GET"]),
            Route("/api/{rest:path}", self._api_post, methods=["POST"]),
            Route("/_sandbox/stats", self._side_stats, methods=["GET"]),
            Route("/_sandbox/faults", self._side_faults, methods=["GET", "PUT"]),
            Route("/_sandbox/dispatches", self._side_dispatches, methods=["GET"]),
            Route("/_sandbox/requests", self._side_requests, methods=["GET"]),
            Route("/_sandbox/dispatches/{dispatch_id}", self._side_dispatch, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(_Edge, sandbox=self)],
            exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        )

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _templates(self, request: Request) -> Response:
        templates = [t.to_json() for t in TEMPLATES.values()]
        return JSONResponse({"templates": templates, "total": len(templates)})

    async def _template(self, request: Request) -> Response:
        raw = request.path_params["template_id"]
        template = TEMPLATES.get(int(raw)) if raw.isascii() and raw.isdigit() else None
        if template is None:
            raise ApiError(404, "template_not_found", f"Template {raw[:40]} not found")
        return JSONResponse(template.to_json())

    async def _config(self, request: Request) -> Response:
        return JSONResponse(
            {
                "user": {"email": self.settings.email},
                "company": {"name": "Sandbox"},
                "defaultProviders": dict(DEFAULT_PROVIDERS),
                "providerOverrides": {},
                "providers": {s: sorted(PROVIDERS[s]) or ["*"] for s in SERVICES},
            }
        )

    async def _api_post(self, request: Request) -> Response:
        segments = request.path_params["rest"].split("/")
        if segments[-1] == VALIDATE_SEGMENT:
            services = _services(segments[:-1], request.url.path)
            body = await _json_body(request)
            checked = check_request(
                body, services, callback_field=self.settings.callback_field, needs_callback=False
            )
            return JSONResponse(
                {
                    "valid": True,
                    "services": list(checked.services),
                    "service": checked.service,
                    "provider": checked.provider,
                    "template": {"id": checked.template.id, "name": checked.template.name},
                }
            )
        services = _services(segments, request.url.path)
        return await self._dispatch(request, services)

    async def _dispatch(self, request: Request, services: tuple[str, ...]) -> Response:
        faults = self._faults
        await self._pause(faults.latency)
        self._enforce_rate_limit()
        if faults.refuse_next:
            status = faults.refuse_next.pop(0)
            if status == 429:
                raise _rate_limited(faults.retry_after, http_date=faults.retry_after_http_date)
            _, code, message = next(e for e in SERVER_ERRORS if e[0] == status)
            raise ApiError(status, code, message)
        if self._roll(faults.rate_limit_rate):
            raise _rate_limited(faults.retry_after, http_date=faults.retry_after_http_date)
        if self._roll(faults.error_rate):
            status, code, message = self._rng.choice(SERVER_ERRORS)
            raise ApiError(status, code, message)
        answer_late = self._roll(faults.timeout_rate)

        body = await _json_body(request)
        run_async = _async_mode(request)
        checked = check_request(
            body, services, callback_field=self.settings.callback_field, needs_callback=run_async
        )
        key = request.headers.get(HEADER_IDEMPOTENCY_KEY, "")
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise invalid(HEADER_IDEMPOTENCY_KEY, key, f"at most {MAX_IDEMPOTENCY_KEY} characters")

        replayed = False
        if key:
            fingerprint = _fingerprint(request.url.path, run_async, body)
            remembered = self._idempotency.get(key)
            if remembered is not None:
                if remembered.fingerprint != fingerprint:
                    raise ApiError(
                        409,
                        "idempotency_key_reused",
                        "This idempotency key was used with a different request",
                        field=HEADER_IDEMPOTENCY_KEY,
                        value=key,
                        expected="the same request as the key's first use",
                    )
                # A concurrent first use is still processing: share its answer when it comes.
                answer = await asyncio.shield(remembered.answer)
                replayed = True
            else:
                future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
                self._idempotency[key] = _Remembered(fingerprint, future)
                try:
                    answer = await self._process(request, body, checked, run_async, key)
                except BaseException:
                    # Not processed after all: the key stays free for a retry, and whoever
                    # waited on this first use is told to retry too.
                    del self._idempotency[key]
                    status, code, message = SERVER_ERRORS[-1]
                    future.set_result(_Answer(status, error=ApiError(status, code, message)))
                    raise
                future.set_result(answer)
        else:
            answer = await self._process(request, body, checked, run_async, key)

        state = request.scope["state"]
        state["dispatch_id"], state["replayed"] = answer.dispatch_id, replayed
        if answer_late:
            await self._pause(faults.timeout_delay)
        return _respond(answer, request, replayed=replayed)

    async def _process(
        self,
        request: Request,
        body: JSON,
        checked: CheckedRequest,
        run_async: bool,
        key: str,
    ) -> _Answer:
        record = DispatchRecord(
            dispatch_id=new_id("disp"),
            path=request.url.path,
            services=checked.services,
            service=checked.service,
            provider=checked.provider,
            mode="async" if run_async else "sync",
            body=body,
            idempotency_key=key,
            request_id=_request_id(request),
            received_at=time.time(),
            callback_url=checked.callback_url,
        )
        self._records[record.dispatch_id] = record
        failed = self._roll(self._faults.fail_rate)
        result = provider_result(checked.service, checked.provider, body)
        failure = _provider_failure(checked) if failed else None
        if failure is None:
            record.status, record.result = "completed", result
        else:
            record.status = "failed"
            record.error = failure.body(path=record.path, request_id=record.request_id)

        dispatch_id = record.dispatch_id
        if run_async:
            self._plan_webhooks(record, checked, body, result)
            queued = {"dispatchId": dispatch_id, "status": "queued"}
            return _Answer(202, queued, dispatch_id=dispatch_id)

        await self._pause(self._sync_delay())
        if failure is not None:
            return _Answer(failure.status, error=failure, dispatch_id=dispatch_id)
        return _Answer(
            200,
            {
                "dispatchId": dispatch_id,
                "status": "completed",
                "service": checked.service,
                "provider": checked.provider,
                "result": result,
            },
            dispatch_id=dispatch_id,
        )

    def _plan_webhooks(
        self, record: DispatchRecord, checked: CheckedRequest, body: JSON, result: JSON
    ) -> None:
        """The webhooks an async dispatch sends, if its chain calls back, and their delivery."""
        target = callback_target(
            checked.services,
            checked.provider_for,
            callback_services=self.settings.callback_services,
            callback_providers=self.settings.callback_providers,
        )
        if target is None:
            return
        service, provider = target
        record.callback_service, record.callback_provider = service, provider
        if service != checked.service:
            result = provider_result(service, provider, body)
        planned = plan_events(
            provider, body, result, failure=record.error, rng=self._rng, now=iso_now()
        )
        record.webhooks = [WebhookRecord(new_id("wh"), p.event, p.data) for p in planned]
        if self._roll(self._faults.webhook_loss_rate):
            record.webhooks_lost = True
            return
        progress = [w for w, p in zip(record.webhooks, planned, strict=True) if p.progress]
        if progress and self._roll(self._faults.late_progress_rate):
            again = progress[-1]
            late = WebhookRecord(new_id("wh"), again.event, again.data, repeats=again.webhook_id)
            record.webhooks.append(late)
        self._sender.schedule(record, record.webhooks)

    def _enforce_rate_limit(self) -> None:
        limit = self.settings.rate_limit
        if limit <= 0 or len(self._arrivals) <= limit:
            return
        wait = self._arrivals[0] + self.settings.rate_window - time.monotonic()
        raise _rate_limited(max(wait, 0.0), http_date=False)

    def _sync_delay(self) -> float:
        low, high = self.settings.sync_delay, self.settings.sync_delay_max
        if high is None or high <= low:
            return low
        return self._rng.uniform(low, high)

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short when the sandbox closes, so no request holds up a shutdown."""
        if seconds <= 0 or self._closing.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # the side door

    async def _side_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats().to_json())

    async def _side_faults(self, request: Request) -> Response:
        if request.method == "PUT":
            changes = await _json_body(request)
            if not isinstance(changes, dict):
                raise ApiError(400, "invalid_request", "The body must be a JSON object of faults")
            try:
                self._faults.update(changes)
            except ValueError as exc:
                raise ApiError(400, "invalid_field", str(exc)) from None
        return JSONResponse(self._faults.to_json())

    async def _side_dispatches(self, request: Request) -> Response:
        return JSONResponse(
            {
                "dispatches": [
                    {"dispatchId": r.dispatch_id, "path": r.path, "status": r.status}
                    for r in self._records.values()
                ]
            }
        )

    async def _side_requests(self, request: Request) -> Response:
        key = request.query_params.get("idempotencyKey")
        entries = [r for r in self._request_log if key is None or r.idempotency_key == key]
        return JSONResponse({"requests": [r.to_json() for r in entries]})

    async def _side_dispatch(self, request: Request) -> Response:
        record = self._records.get(request.path_params["dispatch_id"])
        if record is None:
            raise ApiError(404, "dispatch_not_found", "No such dispatch")
        return JSONResponse(record.to_json())


class _Edge:
    """Every request: its X-Request-ID (echoed), Basic Auth outside the open paths, and the
    request log and dispatch statistics, which count every dispatch POST whatever stops it."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get(HEADER_REQUEST_ID, "")
        ok = len(given) <= MAX_REQUEST_ID and _PRINTABLE.fullmatch(given)
        request_id = given if ok else f"req_{secrets.token_hex(8)}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        entry: RequestRecord | None = None
        if is_dispatch_request(scope["method"], scope["path"]):
            entry = RequestRecord(
                request_id=request_id,
                idempotency_key=request.headers.get(HEADER_IDEMPOTENCY_KEY, ""),
                path=scope["path"],
                mode="async" if _asks_async(request) else "sync",
                received_at=time.time(),
            )
            self.sandbox._note_arrival(entry)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER_REQUEST_ID] = request_id
                if entry is not None:
                    entry.dispatch_id = state.get("dispatch_id")
                    entry.replayed = bool(state.get("replayed"))
                    self.sandbox._note_status(entry, int(message["status"]))
            await send(message)

        path: str = scope["path"]
        needs_auth = path not in OPEN_PATHS and not path.startswith(SIDE_DOOR_PREFIX)
        if needs_auth and not self.sandbox._authorized(request.headers.get("Authorization")):
            error = ApiError(
                401,
                "unauthorized",
                "Invalid or missing credentials",
                headers={"WWW-Authenticate": 'Basic realm="Docs-Dispatcher"'},
            )
            await _error_response(error, path, request_id)(scope, receive, send_with_id)
            return
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if entry is not None and entry.status is None:
                # Starlette's outermost middleware answers what escapes with a bare 500.
                self.sandbox._note_status(entry, 500)
            raise


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _error_response(error: ApiError, path: str, request_id: str) -> Response:
    return JSONResponse(
        error.body(path=path, request_id=request_id), error.status, headers=error.headers
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc, request.url.path, _request_id(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "endpoint_not_found", f"No endpoint {request.url.path[:200]}")
    elif exc.status_code == 405:
        error = ApiError(405, "method_not_allowed", f"{request.method} is not allowed here")
    else:
        error = ApiError(exc.status_code, "http_error", str(exc.detail))
    error.headers.update(exc.headers or {})
    return _error_response(error, request.url.path, _request_id(request))


def _respond(answer: _Answer, request: Request, *, replayed: bool) -> Response:
    headers = {HEADER_REPLAYED: "true"} if replayed else None
    if answer.error is not None:
        response = _error_response(answer.error, request.url.path, _request_id(request))
        if headers:
            response.headers.update(headers)
        return response
    return JSONResponse(answer.body, answer.status, headers=headers)


def _services(segments: list[str], path: str) -> tuple[str, ...]:
    """The chain a path names (/api/file/email), or 404: every segment a service, none twice."""
    known = bool(segments) and all(s in SERVICES for s in segments)
    if not known or len(set(segments)) != len(segments):
        raise ApiError(404, "endpoint_not_found", f"No endpoint {path[:200]}")
    return tuple(segments)


def _asks_async(request: Request) -> bool:
    """What the request asked for, as the request log shows it, even when refused."""
    return request.query_params.get("async", "").lower() == "true"


def _async_mode(request: Request) -> bool:
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


async def _json_body(request: Request) -> Any:
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


def _fingerprint(path: str, run_async: bool, body: JSON) -> str:
    canonical = json.dumps(
        {"path": path, "async": run_async, "body": body}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _rate_limited(seconds: float, *, http_date: bool) -> ApiError:
    whole = math.ceil(seconds)
    value = email.utils.formatdate(time.time() + whole, usegmt=True) if http_date else str(whole)
    return ApiError(
        429,
        "rate_limited",
        "Too many requests; retry later",
        headers={"Retry-After": value},
    )


def _provider_failure(checked: CheckedRequest) -> ApiError:
    return ApiError(
        417,
        "provider_error",
        f"{checked.provider} refused the {checked.service} dispatch",
        field="providerName",
        value=checked.provider,
        expected=f"a request {checked.provider} accepts",
    )


async def serve_sandbox(
    settings: SandboxSettings,
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> tuple[Sandbox, HttpServer]:
    """The sandbox on a real HTTP(S) server (port 0 = any free port). Stop it with
    `await sandbox.close()` then `await server.stop()`."""
    sandbox = Sandbox(settings)
    try:
        server = await start_http(sandbox.app, host, port, certfile=certfile, keyfile=keyfile)
    except BaseException:
        await sandbox.close()
        raise
    return sandbox, server


__all__ = ["Sandbox", "is_dispatch_request", "serve_sandbox"]
