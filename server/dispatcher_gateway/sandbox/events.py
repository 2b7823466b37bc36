"""The webhooks of docs/upstream.md "Webhooks": which providers call back, for which service,
and the events one async dispatch through them sends, in the order they happen."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventSequence:
    """What one provider sends: progress events (not an end), then exactly one end."""

    service: str
    progress: tuple[str, ...]
    success: str
    failures: tuple[str, ...]
    """The ends `fail_rate` picks from."""


EVENT_SEQUENCES: Mapping[str, EventSequence] = {
    "universign": EventSequence(
        "esign",
        progress=("signer_signed",),
        success="transaction_completed",
        failures=("transaction_failed", "transaction_canceled"),
    ),
    "signaturit": EventSequence(
        "esign",
        progress=(),
        success="document_signed",
        failures=("document_declined", "document_expired", "document_canceled"),
    ),
    "mysendingbox": EventSequence(
        "postal",
        progress=("letter_created", "letter_in_transit"),
        success="letter_delivered",
        failures=("letter_failed", "letter_returned"),
    ),
}
"""By provider. A provider not named here (yousign, lob, every provider of the other services)
never calls back."""

CALLBACK_PROVIDERS: frozenset[str] = frozenset(EVENT_SEQUENCES)
CALLBACK_SERVICES: frozenset[str] = frozenset(s.service for s in EVENT_SEQUENCES.values())

END_STATUS: Mapping[str, str] = {
    "transaction_completed": "completed",
    "transaction_failed": "failed",
    "transaction_canceled": "canceled",
    "document_signed": "completed",
    "document_declined": "declined",
    "document_expired": "expired",
    "document_canceled": "canceled",
    "letter_delivered": "delivered",
    "letter_failed": "failed",
    "letter_returned": "returned",
}
"""The `data.status` each end carries (`completed` for document_signed, as the documentation's
example shows)."""


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    event: str
    data: JSON
    progress: bool = False
    """Not an end: the kind of event `late_progress_rate` sends again after the end."""


def callback_target(
    services: Sequence[str],
    provider_for: Callable[[str], str],
    *,
    callback_services: Collection[str],
    callback_providers: Collection[str],
) -> tuple[str, str] | None:
    """The (service, provider) whose webhooks an async dispatch through this chain sends: the
    last service of the chain that calls back with the provider it goes through, or None when
    none does (the dispatch is then never called back)."""
    for service in reversed(services):
        provider = provider_for(service)
        sequence = EVENT_SEQUENCES.get(provider)
        if (
            sequence is not None
            and sequence.service == service
            and service in callback_services
            and provider in callback_providers
        ):
            return service, provider
    return None


def plan_events(
    provider: str,
    body: Mapping[str, Any],
    result: JSON,
    *,
    failure: JSON | None,
    rng: random.Random,
    now: str,
) -> list[PlannedEvent]:
    """The events of one async dispatch through a provider of EVENT_SEQUENCES, in the order they
    happen. `failure` (an error body) ends it with one of the provider's failure events, picked
    with `rng`, whose data carries the error body."""
    sequence = EVENT_SEQUENCES[provider]
    end = sequence.success if failure is None else rng.choice(sequence.failures)
    if provider == "universign":
        return _universign(body, result, end, failure, now)
    if provider == "signaturit":
        return _signaturit(body, result, end, failure, now)
    return _mysendingbox(result, end, failure)


def _universign(
    body: Mapping[str, Any], result: JSON, end: str, failure: JSON | None, now: str
) -> list[PlannedEvent]:
    emails = _signer_emails(body)
    # A transaction that fails or is canceled stops at its last signer: the others signed.
    signed = emails if failure is None else emails[:-1]
    document = {"documentId": result.get("documentId")}
    steps = [
        PlannedEvent(
            "signer_signed", {**document, "signer": _signer(email, True, now)}, progress=True
        )
        for email in signed
    ]
    signers = _signers(emails, len(signed), now)
    steps.append(_end(end, {**document, "signers": signers}, failure))
    return steps


def _signaturit(
    body: Mapping[str, Any], result: JSON, end: str, failure: JSON | None, now: str
) -> list[PlannedEvent]:
    # Signaturit sends no progress event: one webhook, the end.
    emails = _signer_emails(body)
    signers = _signers(emails, len(emails) if failure is None else 0, now)
    return [_end(end, {"documentId": result.get("documentId"), "signers": signers}, failure)]


def _mysendingbox(result: JSON, end: str, failure: JSON | None) -> list[PlannedEvent]:
    letter = {"letterId": result.get("letterId"), "trackingNumber": result.get("trackingNumber")}
    return [
        PlannedEvent("letter_created", {**letter, "status": "created"}, progress=True),
        PlannedEvent("letter_in_transit", {**letter, "status": "in_transit"}, progress=True),
        _end(end, letter, failure),
    ]


def _end(event: str, data: JSON, failure: JSON | None) -> PlannedEvent:
    return PlannedEvent(event, {**data, "status": END_STATUS[event], **(failure or {})})


def _signer_emails(body: Mapping[str, Any]) -> list[str]:
    block = body.get("esign")
    signers = block.get("signers") if isinstance(block, dict) else None
    return [str(s.get("email")) for s in (signers or []) if isinstance(s, dict) and s.get("email")]


def _signer(email: str, signed: bool, now: str) -> JSON:
    if signed:
        return {"email": email, "status": "signed", "signedAt": now}
    return {"email": email, "status": "pending"}


def _signers(emails: Sequence[str], signed: int, now: str) -> list[JSON]:
    """Every signer, the first `signed` of them signed."""
    return [_signer(email, i < signed, now) for i, email in enumerate(emails)]
