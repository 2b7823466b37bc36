"""Webhook delivery: signed HTTPS POSTs to the callback URL, retried on the upstream's schedule,
as asyncio tasks the sandbox owns and cancels on close."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from .records import DispatchRecord, WebhookRecord
from .settings import Faults, SandboxSettings
from .signing import HEADER_ID, STANDARD_ID, signature_headers

logger = logging.getLogger("dispatcher_gateway.sandbox")

USER_AGENT = "Docs-Dispatcher-Webhooks/sandbox"
KEEPALIVE_CONNECTIONS = 100
_CAUSE_DEPTH = 8
"""How far down an exception's causes to look for the TLS error under httpx's own."""


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class DeliveryCounters:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    given_up: int = 0
    pending: int = 0


class WebhookSender:
    def __init__(
        self,
        settings: SandboxSettings,
        faults: Callable[[], Faults],
        rng: random.Random,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._faults = faults
        self._rng = rng
        if settings.callback_ca:
            context = ssl.create_default_context(cafile=settings.callback_ca)
        else:
            context = ssl.create_default_context()
        self._http = httpx.AsyncClient(
            verify=context,
            transport=transport,
            timeout=settings.answer_timeout,
            # Every event of every dispatch may be in flight at once.
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=KEEPALIVE_CONNECTIONS
                if settings.webhook_keepalive
                else 0,
            ),
            follow_redirects=False,
            # A proxy from the environment must not see the callbacks (they carry job tokens).
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )
        self.counters = DeliveryCounters()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def schedule(self, record: DispatchRecord, webhooks: Sequence[WebhookRecord]) -> None:
        """Deliver a dispatch's events, each `duplicate_deliveries` times; a late repeat of a
        progress event stays after the others, shuffled or not. The faults are read now, so a
        change affects the dispatches that come after it."""
        if self._closed or record.callback_url is None:
            return
        faults = self._faults()
        copies = faults.duplicate_deliveries
        order = [w for w in webhooks if w.repeats is None]
        if faults.shuffle:
            self._rng.shuffle(order)
        order += [w for w in webhooks if w.repeats is not None]
        self._add_pending(len(order) * copies)
        self._spawn(self._send_in_order(record, order, copies), record.dispatch_id)

    async def wait_idle(self, timeout: float) -> None:
        """Until every delivery is answered 2xx or given up; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=f"sandbox-webhook:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _add_pending(self, n: int) -> None:
        self.counters.pending += n
        if self.counters.pending:
            self._idle.clear()
        else:
            self._idle.set()

    async def _send_in_order(
        self, record: DispatchRecord, webhooks: Sequence[WebhookRecord], copies: int
    ) -> None:
        # Without faults the receiver sees the events in order: each first attempt waits for the
        # previous one's answer. A failed one is retried on its own, so retries reorder.
        if self._settings.event_delay > 0:
            await asyncio.sleep(self._settings.event_delay)
        for webhook in webhooks:
            if not webhook.body:
                webhook.body = _envelope(record, webhook)
            for _ in range(copies):
                if not await self._attempt(record, webhook):
                    self._spawn(self._retry(record, webhook), webhook.webhook_id)

    async def _retry(self, record: DispatchRecord, webhook: WebhookRecord) -> None:
        for delay in self._settings.retry_delays:
            await asyncio.sleep(delay)
            if await self._attempt(record, webhook):
                return
        webhook.given_up += 1
        self.counters.given_up += 1
        self._add_pending(-1)
        logger.info(
            "gave up on webhook %s (%s of %s) after %d attempts",
            webhook.webhook_id,
            webhook.event,
            record.dispatch_id,
            webhook.attempts,
        )

    async def _attempt(self, record: DispatchRecord, webhook: WebhookRecord) -> bool:
        assert record.callback_url is not None
        headers = signature_headers(
            self._settings.signature_scheme,
            self._settings.webhook_secrets,
            webhook_id=webhook.webhook_id,
            timestamp=int(time.time()),
            body=webhook.body,
        )
        if self._faults().omit_webhook_id:
            headers.pop(HEADER_ID, None)
            headers.pop(STANDARD_ID, None)
        headers["Content-Type"] = "application/json"
        webhook.attempts += 1
        self.counters.sent += 1
        outcome: int | str
        try:
            # httpx's own timeouts (the client's), not a cancellation from outside: a request
            # cancelled in flight strands its pooled connection, unclosed.
            response = await self._http.post(
                record.callback_url, content=webhook.body, headers=headers
            )
        except (TimeoutError, httpx.TimeoutException):
            outcome = "timeout"
        except httpx.HTTPError as exc:
            outcome = _transport_error_name(exc)
        else:
            outcome = response.status_code
        webhook.outcomes.append(outcome)
        if isinstance(outcome, int) and 200 <= outcome < 300:
            webhook.delivered += 1
            self.counters.delivered += 1
            self._add_pending(-1)
            return True
        self.counters.failed += 1
        # The callback URL is not logged: its path is the job's capability token.
        logger.debug(
            "webhook %s (%s of %s) attempt %d: %s",
            webhook.webhook_id,
            webhook.event,
            record.dispatch_id,
            webhook.attempts,
            outcome,
        )
        return False


def _envelope(record: DispatchRecord, webhook: WebhookRecord) -> bytes:
    envelope = {
        "event": webhook.event,
        "timestamp": iso_now(),
        "dispatchId": record.dispatch_id,
        "service": record.callback_service,
        "provider": record.callback_provider,
        "data": webhook.data,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def _transport_error_name(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    for _ in range(_CAUSE_DEPTH):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError):
            return "tls_error"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    return type(exc).__name__
