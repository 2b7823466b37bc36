"""What the sandbox's account holds and its providers do: services, providers, templates, and
the provider answers it makes up (the webhooks they send are in events.py)."""

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
    """The service a chain's answer is about: the last one that delivers (email in
    file/email), or the last one when none does."""
    for service in reversed(services):
        if service not in GENERATORS:
            return service
    return services[-1]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def provider_result(service: str, provider: str, body: Mapping[str, Any]) -> JSON:
    """A plausible provider answer for a dispatch that went through: its immediate answer, so
    for esign a document sent for signature and for postal a letter created; what becomes of
    them later comes by webhook, if at all."""
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
