"""Webhook signatures: Dispatcher's (as docs/upstream.md "Signature" describes our reading of
it) and the Standard Webhooks scheme, each with several signatures and several secrets so that
a secret can be rotated without refusing a single webhook.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

TIMESTAMP_TOLERANCE = 300.0
"""Seconds a signed timestamp may be away from now, either way, before the webhook is refused."""

MAX_WEBHOOK_ID_LENGTH = 256
"""Longer (or unprintable) ids are replaced by their hash, so the store gets a bounded key."""

HEADER_SIGNATURE = "X-Webhook-Signature"
HEADER_TIMESTAMP = "X-Webhook-Timestamp"
HEADER_ID = "X-Webhook-Id"
STANDARD_SIGNATURE = "webhook-signature"
STANDARD_TIMESTAMP = "webhook-timestamp"
STANDARD_ID = "webhook-id"

_OUR_PREFIX = "sha256="
_STANDARD_VERSION = "v1"
_STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
_DIGEST_SIZE = hashlib.sha256().digest_size
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_PRINTABLE_ID = re.compile(r"[\x21-\x7e]+")


class WebhookVerificationError(Exception):
    """The webhook is not provably from the upstream. The message is a fixed phrase: it never
    carries a secret, a signature or anything else taken from the request."""


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    id: str
    """The id its sender gave it (bounded; the body's hash when it gave none): for logs."""
    signed_id: str
    """What makes two deliveries one webhook, taken only from what the signature covers, so that
    a replay under another id is still a duplicate: the Standard Webhooks scheme signs its id;
    Dispatcher's signs only the body (and timestamp), so there it is the body's hash. Not the
    timestamp: a retry is signed again with a fresh one (it must be, to pass the tolerance)."""


class WebhookVerifier:
    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance: float = TIMESTAMP_TOLERANCE,
        clock: Callable[[], float] = time.time,
        require_timestamp: bool = True,
    ) -> None:
        if isinstance(secrets, str):
            raise TypeError("secrets must be a sequence of strings, not one string")
        if not secrets or not all(secrets):
            raise ValueError("at least one webhook secret is needed, and none may be empty")
        self._keys = [s.encode() for s in secrets]
        # Standard Webhooks' own secrets are "whsec_" + base64 of the key; also accept those the
        # way its libraries do, next to the raw UTF-8 rule that both schemes share here.
        self._standard_keys = self._keys + [k for k in (_whsec_key(s) for s in secrets) if k]
        self._tolerance = tolerance
        self._clock = clock
        # Dispatcher's scheme makes the timestamp optional; a signature without one could be
        # replayed for ever (and past the store's dedupe window, recorded again).
        self._require_timestamp = require_timestamp

    def __repr__(self) -> str:
        return (
            f"WebhookVerifier(<{len(self._keys)} secrets>, tolerance={self._tolerance:g}, "
            f"require_timestamp={self._require_timestamp})"
        )

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedWebhook:
        """Check the signature; return the webhook's ids (stable across the upstream's retries)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        body_hash = "sha256:" + hashlib.sha256(body).hexdigest()
        if HEADER_SIGNATURE.lower() in lowered:
            self._verify_ours(body, lowered)
            given = lowered.get(HEADER_ID.lower()) or lowered.get(STANDARD_ID)
            return VerifiedWebhook(_bounded_id(given) if given else body_hash, body_hash)
        if STANDARD_SIGNATURE in lowered:
            self._verify_standard(body, lowered)
            signed = _bounded_id(lowered[STANDARD_ID])
            return VerifiedWebhook(signed, signed)
        raise WebhookVerificationError("missing signature")

    def _verify_ours(self, body: bytes, headers: Mapping[str, str]) -> None:
        timestamp = headers.get(HEADER_TIMESTAMP.lower())
        if timestamp is None:
            if self._require_timestamp:
                raise WebhookVerificationError("missing timestamp")
            content = body
        else:
            self._check_timestamp(timestamp)
            content = timestamp.encode() + b"." + body
        candidates = list(_our_signatures(headers[HEADER_SIGNATURE.lower()]))
        _match(self._keys, content, candidates)

    def _verify_standard(self, body: bytes, headers: Mapping[str, str]) -> None:
        webhook_id = headers.get(STANDARD_ID)
        timestamp = headers.get(STANDARD_TIMESTAMP)
        if not webhook_id or timestamp is None:
            raise WebhookVerificationError("missing webhook-id or webhook-timestamp")
        self._check_timestamp(timestamp)
        content = f"{webhook_id}.{timestamp}.".encode() + body
        candidates = list(_standard_signatures(headers[STANDARD_SIGNATURE]))
        _match(self._standard_keys, content, candidates)

    def _check_timestamp(self, value: str) -> None:
        if not _TIMESTAMP.fullmatch(value):
            raise WebhookVerificationError("malformed timestamp")
        if abs(self._clock() - int(value)) > self._tolerance:
            raise WebhookVerificationError("timestamp outside the tolerance")


def _match(keys: Iterable[bytes], content: bytes, candidates: Sequence[bytes]) -> None:
    if not candidates:
        raise WebhookVerificationError("no readable signature")
    for key in keys:
        expected = hmac.new(key, content, hashlib.sha256).digest()
        # Every candidate is compared, so the time taken says nothing about which one matched.
        matched = [hmac.compare_digest(expected, c) for c in candidates]
        if any(matched):
            return
    raise WebhookVerificationError("no signature matches")


def _our_signatures(header: str) -> Iterable[bytes]:
    for item in header.split():
        if not item.startswith(_OUR_PREFIX):
            continue
        try:
            digest = bytes.fromhex(item.removeprefix(_OUR_PREFIX))
        except ValueError:
            continue
        if len(digest) == _DIGEST_SIZE:
            yield digest


def _standard_signatures(header: str) -> Iterable[bytes]:
    for item in header.split():
        version, sep, encoded = item.partition(",")
        if not sep or version != _STANDARD_VERSION:
            continue
        try:
            digest = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(digest) == _DIGEST_SIZE:
            yield digest


def _whsec_key(secret: str) -> bytes | None:
    if not secret.startswith(_STANDARD_SECRET_PREFIX):
        return None
    try:
        return base64.b64decode(secret.removeprefix(_STANDARD_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return None


def _bounded_id(webhook_id: str) -> str:
    if len(webhook_id) <= MAX_WEBHOOK_ID_LENGTH and _PRINTABLE_ID.fullmatch(webhook_id):
        return webhook_id
    return "sha256:" + hashlib.sha256(webhook_id.encode("utf-8", "surrogateescape")).hexdigest()


def _standard_key(secret: str) -> bytes:
    return _whsec_key(secret) or secret.encode()


def sign_dispatcher(
    secret: str, body: bytes, *, timestamp: int | None = None, webhook_id: str | None = None
) -> dict[str, str]:
    """The headers Dispatcher sends with `body` (our reading of its scheme): signed over
    `{timestamp}.{body}` when a timestamp is given, else over the body alone."""
    headers: dict[str, str] = {}
    content = body
    if timestamp is not None:
        headers[HEADER_TIMESTAMP] = str(timestamp)
        content = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()
    headers[HEADER_SIGNATURE] = _OUR_PREFIX + digest
    if webhook_id is not None:
        headers[HEADER_ID] = webhook_id
    return headers


def sign_standard(secret: str, body: bytes, *, timestamp: int, webhook_id: str) -> dict[str, str]:
    """The headers of the Standard Webhooks scheme; a `whsec_` secret is decoded as it says."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_standard_key(secret), content, hashlib.sha256).digest()
    return {
        STANDARD_ID: webhook_id,
        STANDARD_TIMESTAMP: str(timestamp),
        STANDARD_SIGNATURE: f"{_STANDARD_VERSION},{base64.b64encode(digest).decode()}",
    }
