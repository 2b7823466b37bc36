"""A scripted core.ports.Upstream for core's unit tests: answers dispatches from a script (then
with `otherwise`), and notes each call with the mode it was sent in."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.core.model import JSON, DispatchSpec, Mode, UpstreamAttempt, UpstreamFailure
from dispatcher_gateway.core.ports import UpstreamAnswer
from dispatcher_gateway.core.retry import RateLimit, RetryPolicy

Outcome = JSON | UpstreamError

FAST = RetryPolicy(base=0.01, cap=0.02, give_up_after=60.0)
"""Retries within 20 ms: a wait much longer than that can only be the upstream's Retry-After."""
UNLIMITED = RateLimit(1000, 1.0)


def failure(status: int, code: str, *, retry_after: float | None = None) -> UpstreamError:
    """The error the upstream client raises for an answer of `status` (0: no answer)."""
    body = {"error": code, "message": f"{code} happened", "details": {"field": "email.to"}}
    return UpstreamError(
        UpstreamFailure(code, f"{code} happened", status, body if status else {}),
        retryable=status in (0, 429) or status >= 500,
        timeout=code == "upstream_timeout",
        refused=0 < status < 500,
        retry_after=retry_after,
    )


@dataclass(frozen=True, slots=True)
class Call:
    idempotency_key: str
    at: float
    """time.monotonic() when it was made."""
    mode: Mode
    request_id: str


def attempt_for(spec: DispatchSpec, mode: Mode, status: int, request_id: str) -> UpstreamAttempt:
    return UpstreamAttempt(
        time=time.time(),
        endpoint=f"POST {spec.path}",
        mode=mode,
        http_status=status,
        latency=0.001,
        request_id=request_id,
    )


@dataclass
class ScriptedUpstream:
    script: list[Outcome] = field(default_factory=list)
    otherwise: Callable[[], Outcome] = lambda: {"status": "queued"}
    calls: list[Call] = field(default_factory=list)
    sync_gate: asyncio.Event | None = None
    """When given, sync-mode calls wait for it before they answer (a slow upstream)."""
    in_flight: int = 0
    most_in_flight: int = 0

    async def dispatch(
        self,
        spec: DispatchSpec,
        *,
        idempotency_key: str,
        callback_url: str | None,
        timeout: float,
        trace_context: str = "",
    ) -> UpstreamAnswer:
        mode = Mode.SYNC if callback_url is None else Mode.ASYNC
        request_id = f"req_{uuid.uuid4().hex[:12]}"
        self.calls.append(Call(idempotency_key, time.monotonic(), mode, request_id))
        if mode is Mode.SYNC and self.sync_gate is not None:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await self.sync_gate.wait()
            finally:
                self.in_flight -= 1
        outcome = self.script.pop(0) if self.script else self.otherwise()
        if isinstance(outcome, UpstreamError):
            attempt = attempt_for(spec, mode, outcome.failure.http_status, request_id)
            raise UpstreamError(
                outcome.failure,
                retryable=outcome.retryable,
                timeout=outcome.timeout,
                refused=outcome.refused,
                retry_after=outcome.retry_after,
                attempt=dataclasses.replace(attempt, error_code=outcome.failure.code),
            )
        status = 202 if mode is Mode.ASYNC else 200
        body = {"dispatchId": f"disp_{len(self.calls)}", **outcome}
        return UpstreamAnswer(body, attempt_for(spec, mode, status, request_id))

    @property
    def keys(self) -> list[str]:
        return [c.idempotency_key for c in self.calls]

    async def validate(self, spec: DispatchSpec, *, timeout: float) -> JSON:
        return {"valid": True}

    async def templates(self, *, timeout: float) -> list[JSON]:
        return []

    async def close(self) -> None:
        return None
