"""What core needs from the edges, as protocols: the upstream API, and what it offers the
webhook receiver. The implementations live in upstream/ and core/service.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .model import JSON, DispatchSpec, UpstreamAttempt


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """A 2xx answer to a dispatch: its JSON body, and the attempt that got it."""

    body: JSON
    attempt: UpstreamAttempt


class Upstream(Protocol):
    """The Dispatcher REST API. Every method raises core.errors.UpstreamError on a non-2xx answer,
    no answer or a timeout, classified as retryable or not."""

    async def dispatch(
        self, spec: DispatchSpec, *, idempotency_key: str, callback_url: str | None, timeout: float
    ) -> UpstreamAnswer:
        """POST the spec to its path; async mode (`?async=true`, the callback URL in the body) when
        `callback_url` is given. Returns the 2xx answer (async: its body has `dispatchId`); an
        UpstreamError raised carries the attempt too."""

    async def validate(self, spec: DispatchSpec, *, timeout: float) -> JSON:
        """POST to the spec's path + /validate. Returns the 2xx answer's JSON body."""

    async def templates(self, *, timeout: float) -> list[JSON]:
        """GET /api/v1/templates: the account's templates."""

    async def close(self) -> None: ...


class WebhookSink(Protocol):
    """What the webhook receiver hands a verified callback to."""

    async def record_webhook(self, token: str, envelope: JSON, *, webhook_id: str) -> bool:
        """Record one webhook for the job its callback token names, durably, before returning.

        `webhook_id` is what makes two deliveries the same webhook, taken from what its signature
        covers, so that a replay under another id is the same webhook. Returns True when it was
        new, False for a duplicate (same `webhook_id`). Raises NotFound for a token that names no
        job, or an envelope whose `dispatchId` is not the job's; InvalidArgument for an envelope
        without an `event` or whose `data` no client could decode (core/eventdata.py);
        StoreUnavailable when nothing could be written.
        """
