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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..core.errors import InvalidArgument, NotFound, ShuttingDown, StoreUnavailable
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
) -> Starlette:
    observer = observer or NoObserver()
    in_flight = 0

    async def receive_webhook(request: Request) -> JSONResponse:
        nonlocal in_flight
        begun = time.perf_counter()
        if in_flight >= max_in_flight:
            overloaded = Overloaded(f"{in_flight} webhooks in flight")
            return _refuse(request, overloaded, "-", "-", begun)
        in_flight += 1
        try:
            return await _receive(request, begun)
        finally:
            in_flight -= 1

    def _refuse(
        request: Request, exc: Exception, event: str, webhook_id: str, begun: float
    ) -> JSONResponse:
        refusal = _refusal_for(exc)
        token: str = request.path_params["token"]
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
        observer.webhook_handled(refusal.error, time.perf_counter() - begun)
        return JSONResponse(content, status_code=refusal.status, headers=refusal.headers)

    async def _receive(request: Request, begun: float) -> JSONResponse:
        token: str = request.path_params["token"]
        webhook_id = event = "-"
        try:
            _check_media_type(request.headers.get("content-type", ""))
            body = await _read_capped(request, max_body)
            verified = verifier.verify(body, request.headers)
            webhook_id = verified.id
            envelope = _parse(body)
            event = envelope["event"][:_EVENT_LOG_LENGTH]
            recorded = await sink.record_webhook(token, envelope, webhook_id=verified.signed_id)
        except Exception as exc:
            return _refuse(request, exc, event, webhook_id, begun)

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
        observer.webhook_handled(outcome, time.perf_counter() - begun)
        return JSONResponse({"status": outcome})

    return Starlette(routes=[Route(WEBHOOK_PATH, receive_webhook, methods=["POST"])])


def _check_media_type(content_type: str) -> None:
    """application/json, or a structured `+json` type, with any parameters (charset)."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        shown = media_type[:_EVENT_LOG_LENGTH] or "none"
        raise UnsupportedMediaType(f"Content-Type {shown!r} is not JSON")


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk; never holds more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            raise MalformedWebhook("Content-Length is not a number") from None
        if too_large:
            raise PayloadTooLarge(f"Content-Length {declared} exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        body += chunk
    return bytes(body)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse(body: bytes) -> JSON:
    try:
        envelope = json.loads(body, parse_constant=_refuse_constant)
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
