"""What the sandbox's own tests share: its credentials, valid request bodies, and the check of
its error body."""

from __future__ import annotations

import copy
from typing import Any

import httpx

EMAIL = "sandbox@example.com"
PASSWORD = "sandbox-test-password"
CALLBACK = "https://127.0.0.1:9/webhooks/dispatcher/token"

BLOCKS: dict[str, dict[str, Any]] = {
    "email": {
        "from": {"email": "noreply@example.com"},
        "to": [{"email": "ada@example.com"}],
        "subject": "Hello",
        "body": {"text": "Hi Ada"},
    },
    "sms": {"to": ["+33600000000"], "text": "Hi"},
    "postal": {
        "to": {
            "name": "Ada Lovelace",
            "addressLine1": "1 rue de la Paix",
            "city": "Paris",
            "postalCode": "75002",
            "country": "FR",
        }
    },
    "esign": {"documentName": "Contract", "signers": [{"email": "ada@example.com"}]},
}


def valid_body(*services: str, **top: Any) -> dict[str, Any]:
    """A request body the sandbox accepts for these services, with `top` fields added."""
    body: dict[str, Any] = {"template": {"id": 1, "data": {"name": "Ada"}}}
    for service in services:
        if service in BLOCKS:
            body[service] = copy.deepcopy(BLOCKS[service])
    body.update(top)
    return body


def ok_transport(request: httpx.Request) -> httpx.Response:
    """A webhook receiver that answers every attempt 200."""
    return httpx.Response(200)


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details", "timestamp", "path", "requestId"}
    assert body["error"] == code
    assert body["path"] == response.request.url.path
    assert body["requestId"] == response.headers["X-Request-ID"]
    if field is not None:
        assert body["details"]["field"] == field
