"""Per-job callback tokens: the last segment of the webhook URL the upstream calls back.

A token is `{job_id}.{mac}` with mac an HMAC-SHA256 of the job id under the gateway's own key,
so a webhook finds its job even before the acceptance that names its dispatch id, and a forged
webhook needs the token as well as the upstream's signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_MAC_BYTES = 16
VERIFIED_TOKENS = 4096
"""Tokens found good that are remembered, newest kept: a job gets several webhooks, and each
would otherwise cost an HMAC again. Only a token that verified is kept, under its exact text."""


class CallbackTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("callback token key must be at least 16 bytes")
        self._key = key
        self._verified: dict[str, str] = {}

    def _mac(self, job_id: str) -> str:
        # surrogatepass: a job id read from a URL may hold anything, and must only not match.
        data = job_id.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._key, data, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, job_id: str) -> str:
        return f"{job_id}.{self._mac(job_id)}"

    def job_id(self, token: str) -> str | None:
        """The job id the token names, or None when the token is not one of ours."""
        known = self._verified.get(token)
        if known is not None:
            return known
        job_id, sep, mac = token.rpartition(".")
        # compare_digest refuses (TypeError) a str that is not ASCII: ours always is.
        if not sep or not job_id or not mac.isascii():
            return None
        if not hmac.compare_digest(mac, self._mac(job_id)):
            return None
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = job_id
        return job_id
