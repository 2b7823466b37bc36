"""The CompositeRequest rules of docs/upstream.md "The request body": the first broken rule is the
answer, as the upstream's error body carries one field."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .catalog import (
    ANY_PROVIDER,
    DEFAULT_PROVIDERS,
    PROVIDERS,
    SIGNATURE_TYPES,
    TEMPLATES,
    Template,
    primary_service,
)
from .errors import MISSING, ApiError, invalid, missing

JSON = dict[str, Any]

_COUNTRY = re.compile(r"[A-Za-z]{2}")
_POSTAL_FIELDS = ("name", "addressLine1", "city", "postalCode")


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    services: tuple[str, ...]
    service: str
    """The primary service (see catalog.primary_service)."""
    provider: str
    template: Template
    callback_url: str | None

    def provider_for(self, service: str) -> str:
        """The provider a service of the chain goes through: the request's provider is the
        primary service's; any other service of the chain uses the company default."""
        return self.provider if service == self.service else DEFAULT_PROVIDERS[service]


def check_request(
    body: Any,
    services: Sequence[str],
    *,
    callback_field: str,
    needs_callback: bool,
) -> CheckedRequest:
    """The request as the upstream would accept it, or the ApiError it would answer."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "The request body must be a JSON object")
    service = primary_service(services)
    provider = _provider(body, service)
    template = _template(body)
    metadata = body.get("metadata", MISSING)
    if metadata is not MISSING and not isinstance(metadata, dict):
        raise invalid("metadata", metadata, "object")
    callback_url = _callback(body, callback_field) if needs_callback else None
    for name in services:
        check = _SERVICE_RULES.get(name)
        if check is not None:
            check(body)
    return CheckedRequest(tuple(services), service, provider, template, callback_url)


def _provider(body: JSON, service: str) -> str:
    given = body.get("providerName", MISSING)
    if given is MISSING:
        return DEFAULT_PROVIDERS[service]
    allowed = PROVIDERS[service]
    if not isinstance(given, str) or not given:
        raise invalid("providerName", given, "a provider name")
    if allowed is not ANY_PROVIDER and given not in allowed:
        raise invalid("providerName", given, f"one of {'|'.join(sorted(allowed))} for {service}")
    return given


def _template(body: JSON) -> Template:
    template = body.get("template", MISSING)
    if template is MISSING:
        raise missing("template", "object with id and data")
    if not isinstance(template, dict):
        raise invalid("template", template, "object with id and data")
    template_id = template.get("id", MISSING)
    if template_id is MISSING:
        raise missing("template.id", "number")
    if isinstance(template_id, bool) or not isinstance(template_id, int | float):
        raise invalid("template.id", template_id, "number")
    data = template.get("data", MISSING)
    if data is MISSING:
        raise missing("template.data", "object")
    if not isinstance(data, dict):
        raise invalid("template.data", data, "object")
    found = TEMPLATES.get(int(template_id)) if float(template_id).is_integer() else None
    if found is None:
        raise ApiError(
            404,
            "template_not_found",
            f"Template {template_id} not found",
            field="template.id",
            value=template_id,
            expected="the id of one of the account's templates",
        )
    return found


def _callback(body: JSON, field: str) -> str:
    url = body.get(field, MISSING)
    if url is MISSING or url == "":
        raise missing(field, "an https:// URL (required in async mode)")
    if not isinstance(url, str):
        raise invalid(field, url, "an https:// URL")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise invalid(field, url, "an https:// URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise invalid(field, url, "an https:// URL")
    return url


def _block(body: JSON, name: str) -> JSON:
    block = body.get(name, MISSING)
    if block is MISSING:
        raise missing(name, "object")
    if not isinstance(block, dict):
        raise invalid(name, block, "object")
    return block


def _text(block: JSON, path: str, key: str) -> str:
    value = block.get(key, MISSING)
    field = f"{path}.{key}"
    if value is MISSING:
        raise missing(field, "non-empty string")
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, value, "non-empty string")
    return value


def _email(body: JSON) -> None:
    email = _block(body, "email")
    sender = email.get("from", MISSING)
    if sender is MISSING:
        raise missing("email.from", "object")
    if not isinstance(sender, dict):
        raise invalid("email.from", sender, "object")
    to = email.get("to", MISSING)
    if to is MISSING:
        raise missing("email.to", "non-empty array")
    if not isinstance(to, list) or not to:
        raise invalid("email.to", to, "non-empty array")
    _text(email, "email", "subject")


def _sms(body: JSON) -> None:
    sms = _block(body, "sms")
    to = sms.get("to", MISSING)
    if to is MISSING:
        raise missing("sms.to", "phone number, or non-empty array of them")
    if isinstance(to, str) and to.strip():
        return
    if isinstance(to, list) and to and all(isinstance(n, str) and n.strip() for n in to):
        return
    raise invalid("sms.to", to, "phone number, or non-empty array of them")


def _postal(body: JSON) -> None:
    postal = _block(body, "postal")
    to = postal.get("to", MISSING)
    if to is MISSING:
        raise missing("postal.to", "object")
    if not isinstance(to, dict):
        raise invalid("postal.to", to, "object")
    for key in _POSTAL_FIELDS:
        _text(to, "postal.to", key)
    country = to.get("country", MISSING)
    if country is MISSING:
        raise missing("postal.to.country", "ISO 3166-1 alpha-2 code")
    if not isinstance(country, str) or not _COUNTRY.fullmatch(country):
        raise invalid("postal.to.country", country, "ISO 3166-1 alpha-2 code")


def _esign(body: JSON) -> None:
    esign = _block(body, "esign")
    _text(esign, "esign", "documentName")
    signers = esign.get("signers", MISSING)
    if signers is MISSING:
        raise missing("esign.signers", "non-empty array")
    if not isinstance(signers, list) or not signers:
        raise invalid("esign.signers", signers, "non-empty array")
    for i, signer in enumerate(signers):
        if not isinstance(signer, dict):
            raise invalid(f"esign.signers[{i}]", signer, "object")
        _text(signer, f"esign.signers[{i}]", "email")
    kind = esign.get("signatureType", MISSING)
    if kind is not MISSING and (not isinstance(kind, str) or kind not in SIGNATURE_TYPES):
        raise invalid("esign.signatureType", kind, "|".join(sorted(SIGNATURE_TYPES)))


_SERVICE_RULES = {"email": _email, "sms": _sms, "postal": _postal, "esign": _esign}
