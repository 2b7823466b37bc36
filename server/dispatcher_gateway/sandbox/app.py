"""The sandbox: the Docs-Dispatcher REST API of docs/upstream.md, with its webhooks and fault
injection. This file holds its state and what a dispatch request does; routes.py serves it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from .catalog import new_id, provider_result
from .delivery import WebhookSender, iso_now
from .errors import invalid
from .events import callback_target, plan_events
from .faults import provider_failure, rate_limited, refuse_or_pass, roll
from .idempotency import (
    HEADER_IDEMPOTENCY_KEY,
    MAX_IDEMPOTENCY_KEY,
    Answer,
    IdempotencyKeys,
    fingerprint,
)
from .records import DispatchRecord, RequestRecord, SandboxStats, WebhookRecord
from .request_log import RequestLog
from .routes import build_app
from .settings import Faults, SandboxSettings
from .validation import CheckedRequest, check_request
from .wire import async_mode, json_body, request_id, respond

JSON = dict[str, Any]


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
        self._keys = IdempotencyKeys()
        self.request_log = RequestLog(settings.rate_window)
        self._closing = asyncio.Event()
        self.app: Starlette = build_app(self)

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
            dispatch_requests=len(self.request_log.entries),
            by_status=dict(self.request_log.by_status),
            max_in_window=self.request_log.max_in_window,
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
        return list(self.request_log.entries)

    async def wait_for_webhooks(self, timeout: float) -> None:
        """Until every webhook delivery is answered 2xx or given up; TimeoutError otherwise."""
        await self._sender.wait_idle(timeout)

    async def close(self) -> None:
        """Cancel the deliveries in flight and answer any held-back request at once."""
        self._closing.set()
        await self._sender.close()

    # a dispatch request

    async def dispatch(self, request: Request, services: tuple[str, ...]) -> Response:
        """POST /api/{services...}: the faults first, then the request checked, then processed
        once per idempotency key (unless the faults say the key is ignored)."""
        faults = self._faults
        await self._pause(faults.latency)
        wait = self.request_log.over(self.settings.rate_limit)
        if wait is not None:
            raise rate_limited(wait, http_date=False)
        refuse_or_pass(faults, self._rng)
        answer_late = roll(self._rng, faults.timeout_rate)

        body = await json_body(request)
        run_async = async_mode(request)
        checked = check_request(
            body, services, callback_field=self.settings.callback_field, needs_callback=run_async
        )
        key = request.headers.get(HEADER_IDEMPOTENCY_KEY, "")
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise invalid(HEADER_IDEMPOTENCY_KEY, key, f"at most {MAX_IDEMPOTENCY_KEY} characters")

        def process() -> Awaitable[Answer]:
            return self._process(request, body, checked, run_async, key)

        if key and not faults.ignore_idempotency_key:
            printed = fingerprint(request.url.path, run_async, body)
            answer, replayed = await self._keys.answer(key, printed, process)
        else:
            answer, replayed = await process(), False

        state = request.scope["state"]
        state["dispatch_id"], state["replayed"] = answer.dispatch_id, replayed
        if answer_late:
            await self._pause(faults.timeout_delay)
        return respond(answer, request, replayed=replayed)

    async def _process(
        self,
        request: Request,
        body: JSON,
        checked: CheckedRequest,
        run_async: bool,
        key: str,
    ) -> Answer:
        record = DispatchRecord(
            dispatch_id=new_id("disp"),
            path=request.url.path,
            services=checked.services,
            service=checked.service,
            provider=checked.provider,
            mode="async" if run_async else "sync",
            body=body,
            idempotency_key=key,
            request_id=request_id(request),
            received_at=time.time(),
            callback_url=checked.callback_url,
        )
        self._records[record.dispatch_id] = record
        failed = roll(self._rng, self._faults.fail_rate)
        result = provider_result(checked.service, checked.provider, body)
        failure = provider_failure(checked) if failed else None
        if failure is None:
            record.status, record.result = "completed", result
        else:
            record.status = "failed"
            record.error = failure.body(path=record.path, request_id=record.request_id)

        dispatch_id = record.dispatch_id
        if run_async:
            self._plan_webhooks(record, checked, body, result)
            queued = {"dispatchId": dispatch_id, "status": "queued"}
            return Answer(202, queued, dispatch_id=dispatch_id)

        await self._pause(self._sync_delay())
        if failure is not None:
            return Answer(failure.status, error=failure, dispatch_id=dispatch_id)
        return Answer(
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
        if roll(self._rng, self._faults.webhook_loss_rate):
            record.webhooks_lost = True
            return
        progress = [w for w, p in zip(record.webhooks, planned, strict=True) if p.progress]
        if progress and roll(self._rng, self._faults.late_progress_rate):
            again = progress[-1]
            late = WebhookRecord(new_id("wh"), again.event, again.data, repeats=again.webhook_id)
            record.webhooks.append(late)
        self._sender.schedule(record, record.webhooks)

    def _sync_delay(self) -> float:
        low, high = self.settings.sync_delay, self.settings.sync_delay_max
        if high is None or high <= low:
            return low
        return self._rng.uniform(low, high)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short when the sandbox closes, so no request holds up a shutdown."""
        if seconds <= 0 or self._closing.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)


__all__ = ["Sandbox"]
