"""What the sandbox remembers: each dispatch request it received, each dispatch it accepted and
each webhook it owes, and the statistics tests read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass
class WebhookRecord:
    """One event of a dispatch. Its id and body stay the same on every retry and copy."""

    webhook_id: str
    event: str
    data: JSON
    body: bytes = b""
    """Fixed at the first send, when the event's timestamp is taken."""
    attempts: int = 0
    delivered: int = 0
    given_up: int = 0
    outcomes: list[int | str] = field(default_factory=list)
    """Each attempt's HTTP status, or the name of what stopped it (timeout, TLS, refused)."""
    repeats: str | None = None
    """The webhook id of the progress event this one sends again after the end (the
    `late_progress_rate` fault); None for every event planned in order."""

    def to_json(self) -> JSON:
        return {
            "webhookId": self.webhook_id,
            "event": self.event,
            "data": self.data,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "givenUp": self.given_up,
            "outcomes": list(self.outcomes),
            "repeats": self.repeats,
        }


@dataclass
class DispatchRecord:
    dispatch_id: str
    path: str
    services: tuple[str, ...]
    service: str
    """The chain's primary service, the one its answer is about."""
    provider: str
    mode: str
    body: JSON
    """The request body as received."""
    idempotency_key: str
    request_id: str
    received_at: float
    callback_url: str | None
    callback_service: str | None = None
    """The service whose provider calls back, with `callback_provider`: None for a sync
    dispatch, and for an async one that is never called back."""
    callback_provider: str | None = None
    status: str = "queued"
    result: JSON | None = None
    error: JSON | None = None
    webhooks: list[WebhookRecord] = field(default_factory=list)
    """The events it sends, in the order planned (none unless it calls back)."""
    webhooks_lost: bool = False
    """Its webhooks were planned but never sent (the `webhook_loss_rate` fault)."""

    def to_json(self) -> JSON:
        return {
            "dispatchId": self.dispatch_id,
            "path": self.path,
            "services": list(self.services),
            "service": self.service,
            "provider": self.provider,
            "mode": self.mode,
            "status": self.status,
            "body": self.body,
            "idempotencyKey": self.idempotency_key,
            "requestId": self.request_id,
            "receivedAt": self.received_at,
            "callbackUrl": self.callback_url,
            "callbackService": self.callback_service,
            "callbackProvider": self.callback_provider,
            "result": self.result,
            "error": self.error,
            "webhooks": [w.to_json() for w in self.webhooks],
            "webhooksLost": self.webhooks_lost,
        }


@dataclass(slots=True)
class RequestRecord:
    """One dispatch request (POST /api/{service...}) as received, whatever it was answered:
    refused by a fault, by Basic Auth, by validation, or accepted."""

    request_id: str
    """The X-Request-ID it was answered with: the caller's, or one the sandbox made up."""
    idempotency_key: str
    """The X-Idempotency-Key header as sent; empty when there was none."""
    path: str
    mode: str
    """"async" when it asked for ?async=true, else "sync"."""
    received_at: float
    """Wall-clock seconds (time.time()) when it arrived."""
    status: int | None = None
    """The HTTP status it was answered; None while the answer is still to come (held back by
    `timeout_rate`, or by the sync delay)."""
    dispatch_id: str | None = None
    """The dispatch it was answered about (a replay names the key's first dispatch); None when
    it was refused before one was made."""
    replayed: bool = False
    """Answered from an earlier request with the same idempotency key."""
    traceparent: str = ""
    """The W3C traceparent header as sent (the trace the caller continued); empty when none."""

    def to_json(self) -> JSON:
        return {
            "requestId": self.request_id,
            "idempotencyKey": self.idempotency_key,
            "path": self.path,
            "mode": self.mode,
            "receivedAt": self.received_at,
            "status": self.status,
            "dispatchId": self.dispatch_id,
            "replayed": self.replayed,
            "traceparent": self.traceparent,
        }


@dataclass(frozen=True, slots=True)
class SandboxStats:
    dispatches: int
    """Distinct dispatches processed (a replay of an idempotency key adds none)."""
    dispatch_requests: int
    """Every dispatch POST, whatever it was answered."""
    by_status: dict[int, int]
    """Dispatch POSTs by the HTTP status they were answered."""
    max_in_window: int
    """The most dispatch POSTs seen within any `rate_window` seconds."""
    webhooks_sent: int
    """Attempts, every retry and copy counted."""
    webhooks_delivered: int
    """Deliveries (one per event and copy) answered 2xx."""
    webhooks_failed: int
    """Attempts not answered 2xx in time."""
    webhooks_given_up: int
    webhooks_pending: int
    """Deliveries neither answered 2xx nor given up yet."""

    def to_json(self) -> JSON:
        data = dataclasses.asdict(self)
        data["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        return data
