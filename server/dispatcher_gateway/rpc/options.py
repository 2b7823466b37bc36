"""The typed options of a DispatchRequest (email, sms, postal, esign) as the upstream's body
blocks, each checked field by field; and the list of violations a request collects."""

from __future__ import annotations

from dispatcher.gateway.v1 import gateway_pb2 as pb

from ..core.errors import FieldViolation, InvalidArgument
from ..core.model import JSON, Service

MAX_VIOLATIONS = 10
"""Field violations listed in one answer: they travel in the status trailers, twice (message
and details), and a client refuses trailers much over 8 KiB."""
_SIGNATURE_TYPES = {
    pb.SIGNATURE_TYPE_SIMPLE: "SIMPLE",
    pb.SIGNATURE_TYPE_ADVANCED: "ADVANCED",
    pb.SIGNATURE_TYPE_QUALIFIED: "QUALIFIED",
}


def _address(message: pb.EmailAddress) -> JSON:
    out: JSON = {"email": message.email}
    if message.name:
        out["name"] = message.name
    return out


def _postal_address(message: pb.PostalAddress) -> JSON:
    fields = {
        "name": message.name,
        "addressLine1": message.address_line1,
        "addressLine2": message.address_line2,
        "city": message.city,
        "postalCode": message.postal_code,
        "country": message.country,
    }
    return {k: v for k, v in fields.items() if v}


class Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.unlisted = 0

    def add(self, field: str, description: str) -> None:
        if len(self.items) < MAX_VIOLATIONS:
            self.items.append(FieldViolation(field, description))
        else:
            self.unlisted += 1

    def require(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.add(field, description)

    def error(self) -> InvalidArgument:
        items = self.items
        if self.unlisted:
            items = [*items, FieldViolation("", f"and {self.unlisted} more, not listed")]
        return InvalidArgument(items)


def _email_block(req: pb.DispatchRequest, v: Violations) -> JSON:
    e = req.email
    sender, to = e.sender, e.to
    v.require(bool(sender.email), "email.sender.email", "required")
    v.require(len(to) > 0, "email.to", "at least one recipient is required")
    recipients = []
    for i, addr in enumerate(to):
        if "@" not in addr.email:
            v.add(f"email.to[{i}].email", "not an email address")
        recipients.append(_address(addr))
    block: JSON = {"from": _address(sender), "to": recipients}
    if e.cc:
        block["cc"] = [_address(a) for a in e.cc]
    if e.bcc:
        block["bcc"] = [_address(a) for a in e.bcc]
    if e.HasField("reply_to"):
        block["replyTo"] = _address(e.reply_to)
    if e.subject:
        block["subject"] = e.subject
    body = {k: val for k, val in (("html", e.html), ("text", e.text)) if val}
    if body:
        block["body"] = body
    return block


def _sms_block(req: pb.DispatchRequest, v: Violations) -> JSON:
    s = req.sms
    v.require(len(s.to) > 0, "sms.to", "at least one phone number is required")
    block: JSON = {"to": list(s.to)}
    if s.sender:
        block["from"] = s.sender
    if s.text:
        block["text"] = s.text
    return block


def _postal_block(req: pb.DispatchRequest, v: Violations) -> JSON:
    p = req.postal
    to = p.to
    for field, value in (
        ("name", to.name),
        ("address_line1", to.address_line1),
        ("city", to.city),
        ("postal_code", to.postal_code),
    ):
        v.require(bool(value), f"postal.to.{field}", "required")
    v.require(
        len(to.country) == 2 and to.country.isalpha(),
        "postal.to.country",
        "an ISO 3166-1 alpha-2 code is required",
    )
    block: JSON = {"to": _postal_address(to)}
    if p.HasField("sender"):
        block["from"] = _postal_address(p.sender)
    if p.color:
        block["color"] = True
    return block


def _esign_block(req: pb.DispatchRequest, v: Violations) -> JSON:
    e = req.esign
    v.require(bool(e.document_name), "esign.document_name", "required")
    v.require(len(e.signers) > 0, "esign.signers", "at least one signer is required")
    signers = []
    for i, s in enumerate(e.signers):
        v.require("@" in s.email, f"esign.signers[{i}].email", "not an email address")
        fields = {
            "email": s.email,
            "firstName": s.first_name,
            "lastName": s.last_name,
            "phone": s.phone,
        }
        signers.append({k: val for k, val in fields.items() if val})
    block: JSON = {"documentName": e.document_name, "signers": signers}
    if e.signature_type in _SIGNATURE_TYPES:
        block["signatureType"] = _SIGNATURE_TYPES[e.signature_type]
    return block


BLOCKS = {
    Service.EMAIL: ("email", _email_block),
    Service.SMS: ("sms", _sms_block),
    Service.POSTAL: ("postal", _postal_block),
    Service.ESIGN: ("esign", _esign_block),
}


TYPED_OPTIONS = tuple((service, name) for service, (name, _) in BLOCKS.items())
