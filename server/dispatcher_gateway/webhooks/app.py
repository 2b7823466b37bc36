"""The Starlette app that receives Dispatcher's callbacks: media type, size cap, signature, parse,
record.

Every status it answers comes from one table, `_REFUSALS`. A 2xx tells Dispatcher to stop
retrying, so it is sent only once the webhook is durably recorded (or known to be a duplicate);
anything that might succeed later (store down, draining, a bug) answers 5xx so that it retries.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from ..core.errors import InvalidArgument, NotFound, ShuttingDown, StoreUnavailable
from ..core.hub import EventHub
from ..core.model import JSON
from ..core.ports import NoObserver, Observer, WebhookSink
from .signature import WebhookVerificationError, WebhookVerifier

logger = logging.getLogger("dispatcher_gateway.webhooks")

WEBHOOK_PATH = "/webhooks/dispatcher/{token}"
DEFAULT_MAX_BODY = 1 << 20
"""Bytes: a webhook envelope is small; a larger body is refused before it is read."""

STORE_RETRY_AFTER = 5
"""Seconds Dispatcher is asked to wait before retrying a webhook the store could not take."""

MAX_IN_FLIGHT = 64
"""Webhooks being recorded at once; one more is refused at once (503, Retry-After) rather than
queued. Past the replica's capacity, each webhook would otherwise wait behind all the others
and every answer would come seconds late; with this bound, an accepted webhook waits for at
most this many (a fraction of a second at the store's rate) and Dispatcher retries the rest."""

TOKEN_LOG_PREFIX = 8
"""Characters of the callback token that logs show: enough to find the job, not to forge a URL."""

_EVENT_LOG_LENGTH = 64


class Overloaded(Exception):
    """MAX_IN_FLIGHT webhooks are being recorded: the receiver takes no more for now."""


class PayloadTooLarge(Exception):
    """The body is larger than the receiver accepts."""


class UnsupportedMediaType(Exception):
    """The body is declared as something other than JSON (or not declared at all)."""


class MalformedWebhook(Exception):
    """The body is not a JSON object with a string `event`; the message is the short reason."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    error: str
    log_level: int
    explain: bool = False
    """Whether the answer carries the exception's message as `reason`."""
    headers: dict[str, str] = field(default_factory=dict)


_UNAVAILABLE = _Refusal(
    503, "unavailable", logging.WARNING, headers={"Retry-After": str(STORE_RETRY_AFTER)}
)

# One table from errors to HTTP statuses (docs/design.md, "What bad input gets"); first match wins.
_REFUSALS: tuple[tuple[type[Exception], _Refusal], ...] = (
    (PayloadTooLarge, _Refusal(413, "payload_too_large", logging.WARNING)),
    (UnsupportedMediaType, _Refusal(415, "unsupported_media_type", logging.WARNING)),
    # No detail: a forger learns nothing from the answer; the log line says what failed.
    (WebhookVerificationError, _Refusal(401, "unauthorized", logging.WARNING)),
    (MalformedWebhook, _Refusal(400, "bad_request", logging.WARNING, explain=True)),
    (InvalidArgument, _Refusal(400, "invalid_argument", logging.WARNING, explain=True)),
    (NotFound, _Refusal(404, "not_found", logging.WARNING)),
    (StoreUnavailable, _UNAVAILABLE),
    # At DEBUG: under overload, a line for each refusal would cost the CPU that is short;
    # /metrics counts them (outcome "overloaded").
    (Overloaded, _Refusal(503, "overloaded", logging.DEBUG, headers=_UNAVAILABLE.headers)),
    (ShuttingDown, _UNAVAILABLE),
    # Nobody is left to read the answer; the sender retries.
    (ClientDisconnect, _Refusal(400, "client_disconnected", logging.INFO)),
)
_INTERNAL = _Refusal(500, "internal", logging.ERROR)


def _refusal_for(exc: Exception) -> _Refusal:
    for kind, refusal in _REFUSALS:
        if isinstance(exc, kind):
            return refusal
    return _INTERNAL


def create_webhook_app(
    sink: WebhookSink,
    verifier: WebhookVerifier,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_in_flight: int = MAX_IN_FLIGHT,
    observer: Observer | None = None,
    hub: EventHub | None = None,
) -> Starlette:
    """`hub`, the streams this process holds: a webhook, once verified, waits a moment before it
    is recorded while one of them lags (core/hub.py says when), so that a process saturated with
    webhooks still feeds its streams."""
    receiver = _Receiver(sink, verifier, max_body, max_in_flight, observer or NoObserver(), hub)
    return WebhookApp(receiver)


class WebhookApp(Starlette):
    """The receiver's one route on Starlette, which answers anything else (404, 405) and takes
    the middleware tracing adds. Without middleware, a webhook goes straight to its route: the
    layers Starlette puts around each request (error and exception middleware, the router, a
    Request, a Response built for each answer) cost about as much CPU as the webhook's checks."""

    def __init__(self, receiver: _Receiver) -> None:
        self._route = Route(WEBHOOK_PATH, receiver, methods=["POST"])
        self._receiver = receiver
        super().__init__(routes=[self._route])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.user_middleware:
            match, child_scope = self._route.matches(scope)
            if match is Match.FULL:
                # What Starlette and its router would have put in the scope.
                scope["app"] = self
                scope.setdefault("router", self.router)
                scope.update(child_scope)
                await self._receiver(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _Fixed(JSONResponse):
    """A JSON answer made once and sent to every webhook. Each send gets a header list of its
    own: an outer ASGI layer may append to the list it is given (OpenTelemetry's does, with a
    response propagator set), which on a shared list would grow by one header per webhook."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": list(self.raw_headers),
            }
        )
        await send({"type": "http.response.body", "body": self.body})


_RECORDED = _Fixed({"status": "recorded"})
_DUPLICATE = _Fixed({"status": "duplicate"})
"""Answers sent as they are to every webhook (a Response holds nothing of the request)."""


class _Receiver:
    """The webhook route, an ASGI app: read, check and record one webhook, then answer."""

    def __init__(
        self,
        sink: WebhookSink,
        verifier: WebhookVerifier,
        max_body: int,
        max_in_flight: int,
        observer: Observer,
        hub: EventHub | None = None,
    ) -> None:
        self.sink = sink
        self.hub = hub
        self.verifier = verifier
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.observer = observer
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        begun = time.perf_counter()
        token: str = scope["path_params"]["token"]
        if self.in_flight >= self.max_in_flight:
            overloaded = Overloaded(f"{self.in_flight} webhooks in flight")
            response = self._refuse(token, overloaded, "-", "-", begun)
        else:
            self.in_flight += 1
            try:
                response = await self._receive(token, scope["headers"], receive, begun)
            finally:
                self.in_flight -= 1
        await response(scope, receive, send)

    def _refuse(
        self, token: str, exc: Exception, event: str, webhook_id: str, begun: float
    ) -> JSONResponse:
        refusal = _refusal_for(exc)
        logger.log(
            refusal.log_level,
            "webhook token=%s… event=%r id=%r: %d %s (%s)",
            token[:TOKEN_LOG_PREFIX],
            event,
            webhook_id,
            refusal.status,
            refusal.error,
            exc if refusal is not _INTERNAL else type(exc).__name__,
            exc_info=refusal is _INTERNAL,
        )
        content: dict[str, Any] = {"error": refusal.error}
        if refusal.explain:
            content["reason"] = str(exc)
        self.observer.webhook_handled(refusal.error, time.perf_counter() - begun)
        return JSONResponse(content, status_code=refusal.status, headers=refusal.headers)

    async def _receive(
        self, token: str, raw_headers: list[tuple[bytes, bytes]], receive: Receive, begun: float
    ) -> JSONResponse:
        webhook_id = event = "-"
        try:
            _check_media_type(_first(raw_headers, b"content-type") or "")
            body = await _read_capped(
                receive, _first(raw_headers, b"content-length"), self.max_body
            )
            # Every header, the last of a repeated one winning, as a Starlette Request gives them.
            headers = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers
            }
            verified = self.verifier.verify(body, headers)
            webhook_id = verified.id
            envelope = _parse(body)
            event = envelope["event"][:_EVENT_LOG_LENGTH]
            # Held while it counts as in flight: past MAX_IN_FLIGHT held ones, others get 503.
            if self.hub is not None and self.hub.lagging and await self.hub.yield_to_streams():
                self.observer.webhook_held()
            recorded = await self.sink.record_webhook(
                token, envelope, webhook_id=verified.signed_id
            )
        except Exception as exc:
            return self._refuse(token, exc, event, webhook_id, begun)

        outcome = "recorded" if recorded else "duplicate"
        # A recorded webhook is in the store and counted in /metrics: its line is DEBUG (a line
        # for every webhook would cost CPU in proportion to the load). A duplicate is worth seeing.
        logger.log(
            logging.DEBUG if recorded else logging.INFO,
            "webhook token=%s… event=%r id=%r: %s",
            token[:TOKEN_LOG_PREFIX],
            event,
            webhook_id,
            outcome,
        )
        self.observer.webhook_handled(outcome, time.perf_counter() - begun)
        return _RECORDED if recorded else _DUPLICATE


def _first(raw_headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header `name` (lowercase, as ASGI servers give names), as a Starlette
    Request's `headers.get` reads it."""
    for key, value in raw_headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _check_media_type(content_type: str) -> None:
    """application/json, or a structured `+json` type, with any parameters (charset)."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        shown = media_type[:_EVENT_LOG_LENGTH] or "none"
        raise UnsupportedMediaType(f"Content-Type {shown!r} is not JSON")


async def _read_capped(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body, read message by message; never holds more than `limit` bytes. `declared`: its
    Content-Length, if any."""
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            raise MalformedWebhook("Content-Length is not a number") from None
        if too_large:
            raise PayloadTooLarge(f"Content-Length {declared} exceeds {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        body += chunk
        if not message.get("more_body", False):
            return bytes(body)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
"""Made once: `json.loads` with an option makes a decoder at each call."""


def _parse(body: bytes) -> JSON:
    try:
        # What json.loads does with bytes (UTF-8, -16 or -32, told by the first bytes), but
        # strict: json.loads passes an encoded lone surrogate, which no store can then write.
        text = body.decode(json.detect_encoding(body))
        envelope = _DECODER.decode(text)
    except (ValueError, RecursionError):
        raise MalformedWebhook("body is not valid JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedWebhook("body is not a JSON object")
    event = envelope.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedWebhook("`event` must be a non-empty string")
    # A lone surrogate escape ("\ud800") parses, but no store, log or protobuf can encode it.
    if b"\\ud" in body.lower():
        try:
            json.dumps(envelope, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise MalformedWebhook("body holds an unpaired UTF-16 surrogate") from None
    return envelope
