"""The sandbox's webhooks, in process (the receiver is an httpx.MockTransport): signatures,
envelopes, per-service sequences, retries, giving up, duplicates, order and shuffle."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dispatcher_gateway.sandbox import Faults, Sandbox, SandboxSettings
from dispatcher_gateway.webhooks import WebhookVerifier
from tests.support.sandbox import CALLBACK, EMAIL, PASSWORD, valid_body

SECRET = "whsec-unit-secret"
WAIT = 5.0


@dataclass
class Receiver:
    """Records every webhook attempt; `answer` decides each one's status from the attempts of
    the same webhook id seen so far (1 for the first)."""

    answer: Callable[[int], int] = lambda attempt: 200
    delay: Callable[[int], float] = lambda attempt: 0.0
    seen: list[httpx.Request] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        webhook_id = request.headers.get("X-Webhook-Id") or request.headers["webhook-id"]
        attempt = sum(
            1
            for r in self.seen
            if (r.headers.get("X-Webhook-Id") or r.headers.get("webhook-id")) == webhook_id
        )
        pause = self.delay(attempt)
        # Honour the client's read timeout as a real transport does.
        read_timeout = request.extensions.get("timeout", {}).get("read")
        if read_timeout is not None and pause > read_timeout:
            await asyncio.sleep(read_timeout)
            raise httpx.ReadTimeout("no answer in time", request=request)
        if pause:
            await asyncio.sleep(pause)
        return httpx.Response(self.answer(attempt))

    def events(self) -> list[str]:
        return [json.loads(r.content)["event"] for r in self.seen]

    def ids(self) -> list[str]:
        return [r.headers.get("X-Webhook-Id") or r.headers["webhook-id"] for r in self.seen]


@dataclass
class Harness:
    sandbox: Sandbox
    receiver: Receiver
    client: httpx.AsyncClient

    async def dispatch(self, path: str, body: dict[str, Any], **headers: str) -> str:
        body = {**body, "webhookUrl": CALLBACK}
        response = await self.client.post(f"{path}?async=true", json=body, headers=headers)
        assert response.status_code == 202, response.text
        return str(response.json()["dispatchId"])

    async def settle(self) -> None:
        await self.sandbox.wait_for_webhooks(WAIT)


HarnessFactory = Callable[..., Any]


@pytest.fixture
async def make() -> AsyncIterator[HarnessFactory]:
    opened: list[tuple[Sandbox, httpx.AsyncClient]] = []

    async def factory(receiver: Receiver | None = None, **settings: Any) -> Harness:
        receiver = receiver or Receiver()
        values: dict[str, Any] = {
            "email": EMAIL,
            "password": PASSWORD,
            "webhook_secrets": (SECRET,),
            "time_factor": 0.0001,
            "seed": 3,
        }
        values.update(settings)
        sandbox = Sandbox(
            SandboxSettings(**values), webhook_transport=httpx.MockTransport(receiver)
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app),
            base_url="http://sandbox.test",
            auth=(EMAIL, PASSWORD),
        )
        opened.append((sandbox, client))
        return Harness(sandbox, receiver, client)

    yield factory
    for sandbox, client in opened:
        await client.aclose()
        await sandbox.close()


# signatures


async def test_signature_verifies_with_the_gateways_verifier(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/email", valid_body("email"))
    await h.settle()
    request = h.receiver.seen[0]
    webhook_id = WebhookVerifier([SECRET]).verify(request.content, request.headers)
    assert webhook_id == request.headers["X-Webhook-Id"]


async def test_signature_is_hmac_sha256_of_timestamp_dot_body(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    request = h.receiver.seen[0]
    timestamp = request.headers["X-Webhook-Timestamp"]
    expected = hmac.new(
        SECRET.encode(), f"{timestamp}.".encode() + request.content, hashlib.sha256
    ).hexdigest()
    assert request.headers["X-Webhook-Signature"] == f"sha256={expected}"
    assert abs(int(timestamp) - time.time()) < 5


async def test_every_secret_signs_while_one_rotates(make: HarnessFactory) -> None:
    h = await make(webhook_secrets=("old-secret", "new-secret"))
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    request = h.receiver.seen[0]
    assert len(request.headers["X-Webhook-Signature"].split(" ")) == 2
    WebhookVerifier(["old-secret"]).verify(request.content, request.headers)
    WebhookVerifier(["new-secret"]).verify(request.content, request.headers)


async def test_standard_webhooks_scheme_verifies(make: HarnessFactory) -> None:
    h = await make(signature_scheme="standard")
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    request = h.receiver.seen[0]
    assert "X-Webhook-Signature" not in request.headers
    assert request.headers["webhook-signature"].startswith("v1,")
    webhook_id = WebhookVerifier([SECRET]).verify(request.content, request.headers)
    assert webhook_id == request.headers["webhook-id"]


async def test_a_wrong_secret_does_not_verify(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    request = h.receiver.seen[0]
    with pytest.raises(Exception, match="no signature matches"):
        WebhookVerifier(["another-secret"]).verify(request.content, request.headers)


# envelopes and sequences


async def test_envelope_has_the_documented_fields(make: HarnessFactory) -> None:
    h = await make()
    dispatch_id = await h.dispatch("/api/email", valid_body("email"))
    await h.settle()
    envelope = json.loads(h.receiver.seen[0].content)
    assert set(envelope) == {"event", "timestamp", "dispatchId", "service", "provider", "data"}
    assert envelope["dispatchId"] == dispatch_id
    assert (envelope["service"], envelope["provider"]) == ("email", "sendgrid")
    assert envelope["timestamp"].endswith("Z")
    assert h.receiver.seen[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "body", "events"),
    [
        ("/api/email", valid_body("email"), ["dispatch_completed"]),
        ("/api/sms", valid_body("sms"), ["dispatch_completed"]),
        ("/api/invoicing", valid_body(), ["dispatch_completed"]),
        ("/api/file", valid_body(), ["dispatch_completed"]),
        ("/api/upload", valid_body(), ["dispatch_completed"]),
        ("/api/file/email", valid_body("email"), ["dispatch_completed"]),
        (
            "/api/postal",
            valid_body("postal"),
            ["letter_created", "letter_in_transit", "letter_delivered"],
        ),
        ("/api/esign", valid_body("esign"), ["signer_signed", "document_signed"]),
        (
            "/api/esign",
            valid_body("esign", providerName="universign"),
            ["signer_signed", "transaction_completed"],
        ),
    ],
)
async def test_each_service_sends_its_sequence_in_order(
    make: HarnessFactory, path: str, body: dict[str, Any], events: list[str]
) -> None:
    h = await make()
    await h.dispatch(path, body)
    await h.settle()
    assert h.receiver.events() == events


async def test_esign_signs_once_per_signer_then_completes(make: HarnessFactory) -> None:
    h = await make()
    body = valid_body("esign")
    body["esign"]["signers"] = [{"email": f"s{i}@example.com"} for i in range(3)]
    await h.dispatch("/api/esign", body)
    await h.settle()
    bodies = [json.loads(r.content) for r in h.receiver.seen]
    assert [b["data"]["signer"]["email"] for b in bodies[:3]] == [
        "s0@example.com",
        "s1@example.com",
        "s2@example.com",
    ]
    assert bodies[3]["event"] == "document_signed"
    assert [s["status"] for s in bodies[3]["data"]["signers"]] == ["signed"] * 3


async def test_each_event_has_its_own_webhook_id(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    assert len(set(h.receiver.ids())) == 3


@pytest.mark.parametrize(
    ("path", "body", "last"),
    [
        ("/api/email", valid_body("email"), "dispatch_failed"),
        ("/api/esign", valid_body("esign"), "document_declined"),
        ("/api/esign", valid_body("esign", providerName="universign"), "transaction_failed"),
        ("/api/postal", valid_body("postal"), "letter_returned"),
    ],
)
async def test_fail_rate_ends_with_a_failure_carrying_the_error_body(
    make: HarnessFactory, path: str, body: dict[str, Any], last: str
) -> None:
    h = await make(faults=Faults(fail_rate=1.0))
    await h.dispatch(path, body)
    await h.settle()
    envelope = json.loads(h.receiver.seen[-1].content)
    assert envelope["event"] == last
    assert envelope["data"]["error"] == "provider_error"
    assert {"message", "details", "timestamp", "path", "requestId"} <= set(envelope["data"])


# retries


async def test_a_500_is_retried_with_the_same_id_and_body(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 500 if attempt < 3 else 200))
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    assert len(h.receiver.seen) == 3
    assert len(set(h.receiver.ids())) == 1
    assert len({r.content for r in h.receiver.seen}) == 1
    stats = h.sandbox.stats()
    assert (stats.webhooks_sent, stats.webhooks_failed, stats.webhooks_delivered) == (3, 2, 1)


async def test_each_retry_is_signed_afresh(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 503 if attempt < 3 else 200))
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    for request in h.receiver.seen:
        WebhookVerifier([SECRET]).verify(request.content, request.headers)


async def test_retries_wait_out_the_scaled_schedule(make: HarnessFactory) -> None:
    # 5 s and 5 min scaled by 0.001: 5 ms, then 300 ms.
    h = await make(Receiver(answer=lambda attempt: 500 if attempt < 3 else 200), time_factor=0.001)
    started = time.monotonic()
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    assert time.monotonic() - started >= 0.305


async def test_gives_up_after_the_last_retry(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 500), time_factor=0.000001)
    dispatch_id = await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    stats = h.sandbox.stats()
    assert (stats.webhooks_sent, stats.webhooks_given_up, stats.webhooks_pending) == (8, 1, 0)
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    assert record.webhooks[0].outcomes == [500] * 8


async def test_a_slow_answer_counts_as_failed_and_is_retried(make: HarnessFactory) -> None:
    h = await make(
        Receiver(delay=lambda attempt: 0.3 if attempt == 1 else 0.0),
        time_factor=0.001,
        answer_timeout_floor=0.0,
    )
    dispatch_id = await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    assert record.webhooks[0].outcomes == ["timeout", 200]


async def test_an_unreachable_receiver_is_retried(make: HarnessFactory) -> None:
    attempts = 0

    def refuse_once(attempt: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise httpx.ConnectError("refused")
        return 200

    h = await make(Receiver(answer=refuse_once))
    dispatch_id = await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    assert record.webhooks[0].outcomes == ["connect_error", 200]


async def test_a_failed_event_does_not_hold_back_the_next(make: HarnessFactory) -> None:
    first_id: list[str] = []
    receiver = Receiver()

    def answer(attempt: int) -> int:
        webhook_id = receiver.ids()[-1]
        if not first_id:
            first_id.append(webhook_id)
        return 500 if webhook_id == first_id[0] and attempt == 1 else 200

    receiver.answer = answer
    h = await make(receiver, time_factor=0.01)
    await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    # The first event's retry (50 ms later) lands after the others' first attempts.
    assert h.receiver.events()[:3] == ["letter_created", "letter_in_transit", "letter_delivered"]
    assert h.receiver.events()[3] == "letter_created"


# duplicates, order, delay


async def test_duplicate_deliveries_share_the_webhook_id(make: HarnessFactory) -> None:
    h = await make(faults=Faults(duplicate_deliveries=3))
    await h.dispatch("/api/sms", valid_body("sms"))
    await h.settle()
    assert len(h.receiver.seen) == 3
    assert len(set(h.receiver.ids())) == 1
    assert h.sandbox.stats().webhooks_delivered == 3


async def test_shuffle_changes_the_order_of_events(make: HarnessFactory) -> None:
    h = await make(faults=Faults(shuffle=True))
    body = valid_body("esign")
    body["esign"]["signers"] = [{"email": f"s{i}@example.com"} for i in range(5)]
    orders = []
    for _ in range(4):
        h.receiver.seen.clear()
        await h.dispatch("/api/esign", body)
        await h.settle()
        orders.append(h.receiver.events())
    assert all(sorted(o) == sorted(orders[0]) for o in orders)
    assert any(o[-1] != "document_signed" for o in orders)


async def test_event_delay_holds_the_first_webhook(make: HarnessFactory) -> None:
    h = await make(event_delay=0.2)
    started = time.monotonic()
    await h.dispatch("/api/sms", valid_body("sms"))
    assert h.receiver.seen == []
    await h.settle()
    assert time.monotonic() - started >= 0.2


async def test_a_replayed_dispatch_sends_no_new_webhooks(make: HarnessFactory) -> None:
    h = await make()
    for _ in range(3):
        await h.dispatch("/api/sms", valid_body("sms"), **{"X-Idempotency-Key": "job-a"})
    await h.settle()
    assert len(h.receiver.seen) == 1


async def test_webhooks_go_out_while_the_answer_is_held_back(make: HarnessFactory) -> None:
    h = await make(faults=Faults(timeout_rate=1.0, timeout_delay=0.3))
    task = asyncio.create_task(h.dispatch("/api/sms", valid_body("sms")))
    while not h.sandbox.dispatches:
        await asyncio.sleep(0.01)
    await h.settle()
    assert h.receiver.events() == ["dispatch_completed"]
    assert not task.done()
    await task


async def test_sync_dispatches_send_no_webhooks(make: HarnessFactory) -> None:
    h = await make()
    body = {**valid_body("sms"), "webhookUrl": CALLBACK}
    response = await h.client.post("/api/sms", json=body)
    assert response.status_code == 200
    await h.settle()
    assert h.receiver.seen == []


async def test_close_cancels_pending_retries(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 500), time_factor=1.0)
    await h.dispatch("/api/sms", valid_body("sms"))
    while not h.receiver.seen:
        await asyncio.sleep(0.01)
    await h.sandbox.close()
    assert h.sandbox.stats().webhooks_pending == 1
    assert len(h.receiver.seen) == 1
