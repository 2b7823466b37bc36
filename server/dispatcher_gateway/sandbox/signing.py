"""How the sandbox signs a webhook, in either scheme of docs/upstream.md "Signature".

Written apart from webhooks/signature.py on purpose: the tests check one against the other."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from .settings import SignatureScheme

HEADER_SIGNATURE = "X-Webhook-Signature"
HEADER_TIMESTAMP = "X-Webhook-Timestamp"
HEADER_ID = "X-Webhook-Id"
STANDARD_SIGNATURE = "webhook-signature"
STANDARD_TIMESTAMP = "webhook-timestamp"
STANDARD_ID = "webhook-id"


def _hmac(secret: str, content: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()


def signature_headers(
    scheme: SignatureScheme,
    secrets: Sequence[str],
    *,
    webhook_id: str,
    timestamp: int,
    body: bytes,
) -> dict[str, str]:
    """The headers of one attempt: one signature per secret, space separated."""
    if scheme == "standard":
        content = f"{webhook_id}.{timestamp}.".encode() + body
        signatures = " ".join(
            "v1," + base64.b64encode(_hmac(s, content)).decode("ascii") for s in secrets
        )
        return {
            STANDARD_ID: webhook_id,
            STANDARD_TIMESTAMP: str(timestamp),
            STANDARD_SIGNATURE: signatures,
        }
    content = f"{timestamp}.".encode() + body
    signatures = " ".join("sha256=" + _hmac(s, content).hex() for s in secrets)
    return {
        HEADER_ID: webhook_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signatures,
    }
