"""What the sandbox's account holds and its providers do: services, providers, templates, the
webhook events each service sends, and the provider answers it makes up."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

SERVICES: tuple[str, ...] = ("invoicing", "esign", "postal", "sms", "email", "file", "upload")

ANY_PROVIDER: frozenset[str] = frozenset()
"""Marks a service that takes whatever provider name it is given."""

PROVIDERS: Mapping[str, frozenset[str]] = {
    "email": frozenset({"sendgrid", "ses", "gmail", "smtp"}),
    "esign": frozenset({"universign", "signaturit", "yousign"}),
    "postal": frozenset({"mysendingbox", "lob"}),
    "invoicing": frozenset({"qonto", "pennylane", "sellsy"}),
    "sms": ANY_PROVIDER,
    "file": ANY_PROVIDER,
    "upload": ANY_PROVIDER,
}

DEFAULT_PROVIDERS: Mapping[str, str] = {
    "email": "sendgrid",
    "esign": "signaturit",
    "postal": "mysendingbox",
    "invoicing": "qonto",
    "sms": "twilio",
    "file": "dispatcher",
    "upload": "dispatcher",
}
"""The company's defaults, used when a request names no provider."""

GENERATORS = frozenset({"file", "upload"})
"""Services that prepare a document for the next one in a chain rather than deliver it."""

SIGNATURE_TYPES = frozenset({"SIMPLE", "ADVANCED", "QUALIFIED"})


@dataclass(frozen=True, slots=True)
class Template:
    id: int
    name: str
    description: str
    services: tuple[str, ...]

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "services": list(self.services),
        }


TEMPLATES: Mapping[int, Template] = {
    t.id: t
    for t in (
        Template(1, "Welcome letter", "A welcome for new customers.", ("email", "postal", "file")),
        Template(2, "Appointment reminder", "Date, time and place of a visit.", ("sms", "email")),
        Template(3, "Service agreement", "A contract to sign.", ("esign", "file")),
        Template(4, "Invoice", "An invoice with its lines and totals.", ("invoicing", "file")),
        Template(5, "Password reset", "A one-time link.", ("email", "sms")),
        Template(6, "Formal notice", "A registered letter.", ("postal", "file", "upload")),
    )
}
"""The account's templates. Their services are advice shown to callers: like the upstream's own
documentation, the sandbox does not refuse a template used with another service."""


def primary_service(services: Sequence[str]) -> str:
    """The service a chain's result and webhooks are about: the last one that delivers
    (email in file/email), or the last one when none does."""
    for service in reversed(services):
        if service not in GENERATORS:
            return service
    return services[-1]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def provider_result(service: str, provider: str, body: Mapping[str, Any]) -> JSON:
    """A plausible provider answer for a dispatch that went through."""
    block = body.get(service)
    block = block if isinstance(block, dict) else {}
    if service == "email":
        to = block.get("to")
        return {
            "status": "sent",
            "messageId": new_id("msg"),
            "accepted": len(to) if isinstance(to, list) else 1,
        }
    if service == "sms":
        to = block.get("to")
        count = len(to) if isinstance(to, list) else 1
        return {"status": "sent", "messageIds": [new_id("sms") for _ in range(count)]}
    if service == "postal":
        return {"status": "created", "letterId": new_id("ltr"), "trackingNumber": new_id("trk")}
    if service == "esign":
        return {"status": "sent", "documentId": new_id("doc")}
    if service == "invoicing":
        return {"status": "created", "invoiceId": new_id("inv"), "provider": provider}
    return {"status": "generated", "fileId": new_id("file"), "contentType": "application/pdf"}


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    event: str
    data: JSON


def plan_events(
    service: str,
    provider: str,
    body: Mapping[str, Any],
    result: JSON,
    *,
    failure: JSON | None,
    now: str,
) -> list[PlannedEvent]:
    """The webhook events of one async dispatch, in the order they happen. `failure` (an error
    body) makes the last one a failure event carrying it."""
    if service == "esign":
        return _esign_events(provider, body, result, failure=failure, now=now)
    if service == "postal":
        letter = {
            "letterId": result.get("letterId"),
            "trackingNumber": result.get("trackingNumber"),
        }
        steps = [
            PlannedEvent("letter_created", {**letter, "status": "created"}),
            PlannedEvent("letter_in_transit", {**letter, "status": "in_transit"}),
        ]
        if failure is None:
            steps.append(PlannedEvent("letter_delivered", {**letter, "status": "delivered"}))
        else:
            steps.append(PlannedEvent("letter_returned", {**letter, **failure}))
        return steps
    if failure is None:
        return [PlannedEvent("dispatch_completed", result)]
    return [PlannedEvent("dispatch_failed", failure)]


def _esign_events(
    provider: str,
    body: Mapping[str, Any],
    result: JSON,
    *,
    failure: JSON | None,
    now: str,
) -> list[PlannedEvent]:
    block = body.get("esign")
    signers = block.get("signers") if isinstance(block, dict) else None
    emails = [
        str(s.get("email")) for s in (signers or []) if isinstance(s, dict) and s.get("email")
    ]
    document = {"documentId": result.get("documentId")}
    universign = provider == "universign"
    if failure is not None:
        declined = "transaction_failed" if universign else "document_declined"
        return [PlannedEvent(declined, {**document, **failure})]
    steps = [
        PlannedEvent(
            "signer_signed",
            {**document, "signer": {"email": email, "status": "signed", "signedAt": now}},
        )
        for email in emails
    ]
    done = {
        **document,
        "status": "completed",
        "signers": [{"email": e, "status": "signed", "signedAt": now} for e in emails],
    }
    steps.append(PlannedEvent("transaction_completed" if universign else "document_signed", done))
    return steps
