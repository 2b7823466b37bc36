"""The sandbox's settings, its run-time fault knobs, and the upstream's timing constants."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .catalog import SERVICES
from .events import CALLBACK_PROVIDERS, CALLBACK_SERVICES, EVENT_SEQUENCES

RETRY_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds before each retry of a webhook (modelled on Svix, docs/upstream.md "Retries")."""

ANSWER_TIMEOUT = 15.0
"""Seconds a receiver has to answer one webhook attempt before it counts as failed."""

DEFAULT_CALLBACK_FIELD = "webhookUrl"
"""The body field that carries the callback URL (assumed in docs/upstream.md)."""

SignatureScheme = Literal["dispatcher", "standard"]


@dataclass
class Faults:
    """What goes wrong, changed at run time (`sandbox.faults.x = ...` or PUT /_sandbox/faults).

    Every knob applies to dispatch requests (POST /api/{service...}) only."""

    error_rate: float = 0.0
    """Fraction of dispatch requests answered 500, 502 or 503, not processed."""
    timeout_rate: float = 0.0
    """Fraction of dispatch requests processed at once but answered `timeout_delay` late."""
    timeout_delay: float = 30.0
    rate_limit_rate: float = 0.0
    """Fraction of dispatch requests answered 429 with a Retry-After, not processed."""
    retry_after: float = 1.0
    """Seconds the 429's Retry-After asks for (rounded up to whole seconds, as HTTP says)."""
    retry_after_http_date: bool = False
    """Send Retry-After as an HTTP-date instead of delta seconds."""
    latency: float = 0.0
    """Seconds added before every dispatch request is looked at."""
    duplicate_deliveries: int = 1
    """How many times each webhook is delivered, every copy with the same webhook id."""
    shuffle: bool = False
    """Send the events of one dispatch in random order."""
    fail_rate: float = 0.0
    """Fraction of dispatches that end in failure: a 417 when sync; when async, an end picked
    among the provider's failure events if it calls back (nothing to see if it does not)."""
    webhook_loss_rate: float = 0.0
    """Fraction of the async dispatches that call back whose webhooks never come: not one
    attempt is made (DispatchRecord.webhooks_lost; the planned events stay in its record)."""
    late_progress_rate: float = 0.0
    """Fraction of the async dispatches that call back whose last progress event
    (letter_in_transit, the last signer_signed) is sent again after the end, under a new
    webhook id (WebhookRecord.repeats names the one it repeats). A dispatch that sent no
    progress event gets no late one: Signaturit never sends one, nor does a failed Universign
    transaction of a single signer."""
    ignore_idempotency_key: bool = False
    """The upstream breaks an assumption: it ignores X-Idempotency-Key, so a request repeated
    under a key makes a new dispatch (no replay, no 409), as if it carried no key."""
    omit_webhook_id: bool = False
    """The upstream breaks an assumption: webhooks come without their id header (X-Webhook-Id;
    `webhook-id` in the Standard Webhooks scheme, which signs it, so there the receiver cannot
    verify them). Read at each attempt."""
    refuse_next: list[int] = field(default_factory=list)
    """Statuses (429, 500, 502 or 503) the next dispatch requests are answered with, one each,
    in order, before any other fault: a retry sequence a test can count on."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply some fields at once, all or none; ValueError names the first bad one."""
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            kind = _FAULT_FIELDS.get(name)
            if kind is None:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(_FAULT_FIELDS)}")
            checked[name] = _check_fault(name, kind, value)
        for name, value in checked.items():
            setattr(self, name, value)


_FAULT_FIELDS: dict[str, str] = {
    "error_rate": "rate",
    "timeout_rate": "rate",
    "timeout_delay": "seconds",
    "rate_limit_rate": "rate",
    "retry_after": "seconds",
    "retry_after_http_date": "bool",
    "latency": "seconds",
    "duplicate_deliveries": "count",
    "shuffle": "bool",
    "fail_rate": "rate",
    "webhook_loss_rate": "rate",
    "late_progress_rate": "rate",
    "ignore_idempotency_key": "bool",
    "omit_webhook_id": "bool",
    "refuse_next": "statuses",
}

REFUSALS = frozenset({429, 500, 502, 503})


def _check_fault(name: str, kind: str, value: Any) -> Any:
    if kind == "statuses":
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v in REFUSALS for v in value
        ):
            raise ValueError(f"{name} must be a list of {', '.join(map(str, sorted(REFUSALS)))}")
        return list(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number, at least 1")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{name} must be a number")
    if kind == "rate" and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")
    if kind == "seconds" and value < 0:
        raise ValueError(f"{name} must not be negative")
    return float(value)


@dataclass(frozen=True)
class SandboxSettings:
    email: str = "sandbox@example.com"
    password: str = field(default="sandbox-password", repr=False)
    webhook_secrets: tuple[str, ...] = field(default=("sandbox-webhook-secret",), repr=False)
    """Every webhook is signed with each of these (space separated), as while a secret rotates.
    The HMAC key is the secret's UTF-8 bytes, for both schemes."""
    signature_scheme: SignatureScheme = "dispatcher"
    callback_ca: str | None = None
    """A CA file to verify the HTTPS callbacks with; None trusts the system's store."""
    sync_delay: float = 0.0
    """Seconds a synchronous dispatch takes (the least it takes, with `sync_delay_max`)."""
    sync_delay_max: float | None = None
    """When set, each synchronous dispatch takes a time drawn uniformly between `sync_delay`
    and this, with the sandbox's seeded dice; None: always `sync_delay`."""
    time_factor: float = 1.0
    """Multiplies the webhook retry schedule and the answer timeout (tests use e.g. 0.001)."""
    answer_timeout_floor: float = 0.5
    """The scaled answer timeout never drops below this: a TLS handshake on a busy machine
    takes tens of milliseconds, and a spurious timeout would turn into a spurious retry."""
    webhook_keepalive: bool = True
    """Reuse connections between webhooks. False opens one per attempt, as many senders do:
    behind a load balancer each webhook then reaches a replica of its own choosing."""
    event_delay: float = 0.0
    """Seconds before the first webhook of a dispatch (not scaled)."""
    rate_window: float = 60.0
    """Window of the `max_in_window` statistic and of `rate_limit`."""
    rate_limit: int = 0
    """Dispatch requests allowed per `rate_window` before 429s, as production enforces
    (100 a minute); 0 enforces nothing and only measures."""
    callback_field: str = DEFAULT_CALLBACK_FIELD
    callback_services: frozenset[str] = CALLBACK_SERVICES
    """Services whose async dispatches call back (esign and postal, docs/upstream.md
    "Webhooks"). An async dispatch of any other service is answered 202 and never called back."""
    callback_providers: frozenset[str] = CALLBACK_PROVIDERS
    """Providers that call back (universign, signaturit, mysendingbox), among those of
    events.EVENT_SEQUENCES. An async dispatch through any other provider (yousign, lob) is
    answered 202 and never called back."""
    seed: int | None = None
    """Seeds the fault dice, for reproducible runs."""
    faults: Faults = field(default_factory=Faults)
    """The starting faults; each sandbox works on its own copy."""

    def __post_init__(self) -> None:
        if isinstance(self.webhook_secrets, str):
            raise TypeError("webhook_secrets must be a tuple of strings, not one string")
        if not self.webhook_secrets or not all(self.webhook_secrets):
            raise ValueError("at least one webhook secret is needed, and none may be empty")
        if self.signature_scheme not in ("dispatcher", "standard"):
            raise ValueError("signature_scheme must be 'dispatcher' or 'standard'")
        if self.sync_delay < 0:
            raise ValueError("sync_delay must not be negative")
        if self.sync_delay_max is not None and self.sync_delay_max < self.sync_delay:
            raise ValueError("sync_delay_max must not be below sync_delay")
        if self.time_factor <= 0:
            raise ValueError("time_factor must be positive")
        if self.rate_window <= 0:
            raise ValueError("rate_window must be positive")
        for name, known in (
            ("callback_services", SERVICES),
            ("callback_providers", tuple(EVENT_SEQUENCES)),
        ):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} must be a set of strings, not one string")
            value = frozenset(value)
            unknown = sorted(value - set(known))
            if unknown:
                raise ValueError(f"{name}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
            object.__setattr__(self, name, value)

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return tuple(d * self.time_factor for d in RETRY_SCHEDULE)

    @property
    def answer_timeout(self) -> float:
        return max(ANSWER_TIMEOUT * self.time_factor, self.answer_timeout_floor)
