"""The sandbox's webhooks, in process (the receiver is an httpx.MockTransport): signatures,
envelopes, which dispatches call back and each provider's events, retries, giving up,
duplicates, order and shuffle."""

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
from dispatcher_gateway.sandbox.events import END_STATUS
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
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    request = h.receiver.seen[0]
    webhook_id = WebhookVerifier([SECRET]).verify(request.content, request.headers).id
    assert webhook_id == request.headers["X-Webhook-Id"]


async def test_signature_is_hmac_sha256_of_timestamp_dot_body(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/esign", valid_body("esign"))
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
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    request = h.receiver.seen[0]
    assert len(request.headers["X-Webhook-Signature"].split(" ")) == 2
    WebhookVerifier(["old-secret"]).verify(request.content, request.headers)
    WebhookVerifier(["new-secret"]).verify(request.content, request.headers)


async def test_standard_webhooks_scheme_verifies(make: HarnessFactory) -> None:
    h = await make(signature_scheme="standard")
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    request = h.receiver.seen[0]
    assert "X-Webhook-Signature" not in request.headers
    assert request.headers["webhook-signature"].startswith("v1,")
    webhook_id = WebhookVerifier([SECRET]).verify(request.content, request.headers).id
    assert webhook_id == request.headers["webhook-id"]


async def test_a_wrong_secret_does_not_verify(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    request = h.receiver.seen[0]
    with pytest.raises(Exception, match="no signature matches"):
        WebhookVerifier(["another-secret"]).verify(request.content, request.headers)


# envelopes and sequences


async def test_envelope_has_the_documented_fields(make: HarnessFactory) -> None:
    h = await make()
    dispatch_id = await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    envelope = json.loads(h.receiver.seen[0].content)
    assert set(envelope) == {"event", "timestamp", "dispatchId", "service", "provider", "data"}
    assert envelope["dispatchId"] == dispatch_id
    assert (envelope["service"], envelope["provider"]) == ("esign", "signaturit")
    assert envelope["timestamp"].endswith("Z")
    assert h.receiver.seen[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "body", "events"),
    [
        ("/api/esign", valid_body("esign"), ["document_signed"]),
        (
            "/api/esign",
            valid_body("esign", providerName="universign"),
            ["signer_signed", "transaction_completed"],
        ),
        (
            "/api/postal",
            valid_body("postal", providerName="mysendingbox"),
            ["letter_created", "letter_in_transit", "letter_delivered"],
        ),
    ],
)
async def test_each_provider_that_calls_back_sends_its_sequence_in_order(
    make: HarnessFactory, path: str, body: dict[str, Any], events: list[str]
) -> None:
    h = await make()
    await h.dispatch(path, body)
    await h.settle()
    assert h.receiver.events() == events


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/email", valid_body("email")),
        ("/api/sms", valid_body("sms")),
        ("/api/invoicing", valid_body()),
        ("/api/file", valid_body()),
        ("/api/upload", valid_body()),
        ("/api/file/email", valid_body("email")),
        ("/api/esign", valid_body("esign", providerName="yousign")),
        ("/api/postal", valid_body("postal", providerName="lob")),
        ("/api/file/postal", valid_body("postal", providerName="lob")),
    ],
)
async def test_an_async_dispatch_that_does_not_call_back_is_accepted_and_never_called_back(
    make: HarnessFactory, path: str, body: dict[str, Any]
) -> None:
    h = await make()
    dispatch_id = await h.dispatch(path, body)
    await h.settle()
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    assert (record.callback_service, record.webhooks) == (None, [])
    assert h.sandbox.stats().webhooks_sent == 0
    assert h.receiver.seen == []


async def test_a_service_left_out_of_callback_services_does_not_call_back(
    make: HarnessFactory,
) -> None:
    h = await make(callback_services=frozenset({"esign"}))
    await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    assert h.receiver.seen == []


async def test_a_provider_left_out_of_callback_providers_does_not_call_back(
    make: HarnessFactory,
) -> None:
    h = await make(callback_providers=frozenset({"universign"}))
    await h.dispatch("/api/esign", valid_body("esign", providerName="signaturit"))
    await h.settle()
    assert h.receiver.seen == []


async def test_a_chain_calls_back_with_the_events_of_its_service_that_does(
    make: HarnessFactory,
) -> None:
    h = await make()
    await h.dispatch("/api/file/postal", valid_body("postal"))
    await h.settle()
    envelopes = [json.loads(r.content) for r in h.receiver.seen]
    assert [e["event"] for e in envelopes] == [
        "letter_created",
        "letter_in_transit",
        "letter_delivered",
    ]
    assert {(e["service"], e["provider"]) for e in envelopes} == {("postal", "mysendingbox")}


async def test_a_chain_calls_back_when_a_service_before_the_last_does(
    make: HarnessFactory,
) -> None:
    # The request's provider is email's (the primary service); esign goes through its default.
    h = await make()
    dispatch_id = await h.dispatch("/api/esign/email", valid_body("esign", "email"))
    await h.settle()
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    assert (record.service, record.callback_service) == ("email", "esign")
    envelope = json.loads(h.receiver.seen[0].content)
    assert (envelope["event"], envelope["service"], envelope["provider"]) == (
        "document_signed",
        "esign",
        "signaturit",
    )
    assert envelope["data"]["documentId"].startswith("doc_")


async def test_universign_sends_signer_signed_per_signer_then_transaction_completed(
    make: HarnessFactory,
) -> None:
    h = await make()
    body = valid_body("esign", providerName="universign")
    body["esign"]["signers"] = [{"email": "s0@example.com"}, {"email": "s1@example.com"}]
    await h.dispatch("/api/esign", body)
    await h.settle()
    bodies = [json.loads(r.content) for r in h.receiver.seen]
    assert [b["event"] for b in bodies] == [
        "signer_signed",
        "signer_signed",
        "transaction_completed",
    ]
    assert [b["data"]["signer"]["email"] for b in bodies[:2]] == [
        "s0@example.com",
        "s1@example.com",
    ]
    assert bodies[2]["data"]["status"] == "completed"
    assert [s["status"] for s in bodies[2]["data"]["signers"]] == ["signed", "signed"]


async def test_signaturit_sends_only_its_end_whatever_the_signers(make: HarnessFactory) -> None:
    h = await make()
    body = valid_body("esign", providerName="signaturit")
    body["esign"]["signers"] = [{"email": f"s{i}@example.com"} for i in range(3)]
    await h.dispatch("/api/esign", body)
    await h.settle()
    [envelope] = [json.loads(r.content) for r in h.receiver.seen]
    assert envelope["event"] == "document_signed"
    assert envelope["data"]["status"] == "completed"
    assert [s["status"] for s in envelope["data"]["signers"]] == ["signed"] * 3


async def test_each_event_has_its_own_webhook_id(make: HarnessFactory) -> None:
    h = await make()
    await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    assert len(set(h.receiver.ids())) == 3


@pytest.mark.parametrize(
    ("service", "provider", "failures"),
    [
        ("esign", "universign", {"transaction_failed", "transaction_canceled"}),
        ("esign", "signaturit", {"document_declined", "document_expired", "document_canceled"}),
        ("postal", "mysendingbox", {"letter_failed", "letter_returned"}),
    ],
)
async def test_fail_rate_ends_with_each_of_the_providers_failure_events(
    make: HarnessFactory, service: str, provider: str, failures: set[str]
) -> None:
    h = await make(faults=Faults(fail_rate=1.0))
    ends = set()
    for _ in range(20):
        h.receiver.seen.clear()
        await h.dispatch(f"/api/{service}", valid_body(service, providerName=provider))
        await h.settle()
        ends.add(h.receiver.events()[-1])
    assert ends == failures


@pytest.mark.parametrize(
    ("service", "provider"),
    [("esign", "universign"), ("esign", "signaturit"), ("postal", "mysendingbox")],
)
async def test_a_failure_event_carries_its_status_and_the_error_body(
    make: HarnessFactory, service: str, provider: str
) -> None:
    h = await make(faults=Faults(fail_rate=1.0))
    await h.dispatch(f"/api/{service}", valid_body(service, providerName=provider))
    await h.settle()
    envelope = json.loads(h.receiver.seen[-1].content)
    assert envelope["data"]["status"] == END_STATUS[envelope["event"]]
    assert envelope["data"]["error"] == "provider_error"
    assert {"message", "details", "timestamp", "path", "requestId"} <= set(envelope["data"])


async def test_a_failed_universign_transaction_stops_before_its_last_signer(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(fail_rate=1.0))
    body = valid_body("esign", providerName="universign")
    body["esign"]["signers"] = [{"email": "s0@example.com"}, {"email": "s1@example.com"}]
    await h.dispatch("/api/esign", body)
    await h.settle()
    first, end = (json.loads(r.content) for r in h.receiver.seen)
    assert (first["event"], first["data"]["signer"]["email"]) == ("signer_signed", "s0@example.com")
    assert end["event"] in {"transaction_failed", "transaction_canceled"}
    assert [s["status"] for s in end["data"]["signers"]] == ["signed", "pending"]


async def test_fail_rate_picks_the_same_failures_for_the_same_seed(make: HarnessFactory) -> None:
    runs = []
    for _ in range(2):
        h = await make(faults=Faults(fail_rate=1.0), seed=11)
        for _ in range(6):
            await h.dispatch("/api/esign", valid_body("esign"))
        runs.append([d.webhooks[-1].event for d in h.sandbox.dispatches])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


# webhook_loss_rate, late_progress_rate


async def test_webhook_loss_rate_accepts_the_dispatch_and_never_attempts_a_webhook(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(webhook_loss_rate=1.0))
    dispatch_id = await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    assert record.webhooks_lost
    assert [(w.event, w.attempts) for w in record.webhooks] == [
        ("letter_created", 0),
        ("letter_in_transit", 0),
        ("letter_delivered", 0),
    ]
    assert (h.sandbox.stats().webhooks_sent, h.sandbox.stats().webhooks_pending) == (0, 0)
    assert h.receiver.seen == []


async def test_a_partial_webhook_loss_rate_loses_some_dispatches_whole(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(webhook_loss_rate=0.5))
    for _ in range(20):
        await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    lost = {d.dispatch_id for d in h.sandbox.dispatches if d.webhooks_lost}
    called_back = {json.loads(r.content)["dispatchId"] for r in h.receiver.seen}
    assert 0 < len(lost) < 20
    assert called_back == {d.dispatch_id for d in h.sandbox.dispatches} - lost
    assert len(h.receiver.seen) == 3 * len(called_back)


async def test_late_progress_sends_letter_in_transit_again_after_the_end(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(late_progress_rate=1.0))
    dispatch_id = await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    assert h.receiver.events() == [
        "letter_created",
        "letter_in_transit",
        "letter_delivered",
        "letter_in_transit",
    ]
    record = h.sandbox.get_dispatch(dispatch_id)
    assert record is not None
    in_transit, late = record.webhooks[1], record.webhooks[3]
    assert late.repeats == in_transit.webhook_id
    assert len(set(h.receiver.ids())) == 4
    first, again = (json.loads(h.receiver.seen[i].content) for i in (1, 3))
    assert first["data"] == again["data"]


async def test_late_progress_sends_the_last_signer_signed_again_for_universign(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(late_progress_rate=1.0))
    body = valid_body("esign", providerName="universign")
    body["esign"]["signers"] = [{"email": "s0@example.com"}, {"email": "s1@example.com"}]
    await h.dispatch("/api/esign", body)
    await h.settle()
    envelopes = [json.loads(r.content) for r in h.receiver.seen]
    assert [e["event"] for e in envelopes] == [
        "signer_signed",
        "signer_signed",
        "transaction_completed",
        "signer_signed",
    ]
    assert envelopes[3]["data"]["signer"]["email"] == "s1@example.com"


async def test_late_progress_sends_nothing_more_for_signaturit(make: HarnessFactory) -> None:
    # Signaturit sends no progress event, so there is none to send late.
    h = await make(faults=Faults(late_progress_rate=1.0))
    await h.dispatch("/api/esign", valid_body("esign", providerName="signaturit"))
    await h.settle()
    assert h.receiver.events() == ["document_signed"]


async def test_a_late_progress_event_stays_after_the_end_when_shuffled(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(late_progress_rate=1.0, shuffle=True))
    for _ in range(4):
        h.receiver.seen.clear()
        await h.dispatch("/api/postal", valid_body("postal"))
        await h.settle()
        assert h.receiver.events()[-1] == "letter_in_transit"
        assert "letter_delivered" in h.receiver.events()[:-1]


async def test_a_partial_late_progress_rate_repeats_for_some_dispatches(
    make: HarnessFactory,
) -> None:
    h = await make(faults=Faults(late_progress_rate=0.5))
    for _ in range(20):
        await h.dispatch("/api/postal", valid_body("postal"))
    await h.settle()
    repeated = [d for d in h.sandbox.dispatches if d.webhooks[-1].repeats is not None]
    assert 0 < len(repeated) < 20


# retries


async def test_a_500_is_retried_with_the_same_id_and_body(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 500 if attempt < 3 else 200))
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    assert len(h.receiver.seen) == 3
    assert len(set(h.receiver.ids())) == 1
    assert len({r.content for r in h.receiver.seen}) == 1
    stats = h.sandbox.stats()
    assert (stats.webhooks_sent, stats.webhooks_failed, stats.webhooks_delivered) == (3, 2, 1)


async def test_each_retry_is_signed_afresh(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 503 if attempt < 3 else 200))
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    for request in h.receiver.seen:
        WebhookVerifier([SECRET]).verify(request.content, request.headers)


async def test_retries_wait_out_the_scaled_schedule(make: HarnessFactory) -> None:
    # 5 s and 5 min scaled by 0.001: 5 ms, then 300 ms.
    h = await make(Receiver(answer=lambda attempt: 500 if attempt < 3 else 200), time_factor=0.001)
    started = time.monotonic()
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    assert time.monotonic() - started >= 0.305


async def test_gives_up_after_the_last_retry(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 500), time_factor=0.000001)
    dispatch_id = await h.dispatch("/api/esign", valid_body("esign"))
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
    dispatch_id = await h.dispatch("/api/esign", valid_body("esign"))
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
    dispatch_id = await h.dispatch("/api/esign", valid_body("esign"))
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
    await h.dispatch("/api/esign", valid_body("esign"))
    await h.settle()
    assert len(h.receiver.seen) == 3
    assert len(set(h.receiver.ids())) == 1
    assert h.sandbox.stats().webhooks_delivered == 3


async def test_shuffle_changes_the_order_of_events(make: HarnessFactory) -> None:
    h = await make(faults=Faults(shuffle=True))
    body = valid_body("esign", providerName="universign")
    body["esign"]["signers"] = [{"email": f"s{i}@example.com"} for i in range(5)]
    orders = []
    for _ in range(4):
        h.receiver.seen.clear()
        await h.dispatch("/api/esign", body)
        await h.settle()
        orders.append(h.receiver.events())
    assert all(sorted(o) == sorted(orders[0]) for o in orders)
    assert any(o[-1] != "transaction_completed" for o in orders)


async def test_event_delay_holds_the_first_webhook(make: HarnessFactory) -> None:
    h = await make(event_delay=0.2)
    started = time.monotonic()
    await h.dispatch("/api/esign", valid_body("esign"))
    assert h.receiver.seen == []
    await h.settle()
    assert time.monotonic() - started >= 0.2


async def test_a_replayed_dispatch_sends_no_new_webhooks(make: HarnessFactory) -> None:
    h = await make()
    for _ in range(3):
        await h.dispatch("/api/esign", valid_body("esign"), **{"X-Idempotency-Key": "job-a"})
    await h.settle()
    assert len(h.receiver.seen) == 1


async def test_webhooks_go_out_while_the_answer_is_held_back(make: HarnessFactory) -> None:
    h = await make(faults=Faults(timeout_rate=1.0, timeout_delay=0.3))
    task = asyncio.create_task(h.dispatch("/api/esign", valid_body("esign")))
    while not h.sandbox.dispatches:
        await asyncio.sleep(0.01)
    await h.settle()
    assert h.receiver.events() == ["document_signed"]
    assert not task.done()
    await task


async def test_sync_dispatches_send_no_webhooks(make: HarnessFactory) -> None:
    h = await make()
    body = {**valid_body("esign", providerName="universign"), "webhookUrl": CALLBACK}
    response = await h.client.post("/api/esign", json=body)
    assert response.status_code == 200
    await h.settle()
    assert h.receiver.seen == []


async def test_close_cancels_pending_retries(make: HarnessFactory) -> None:
    h = await make(Receiver(answer=lambda attempt: 500), time_factor=1.0)
    await h.dispatch("/api/esign", valid_body("esign"))
    while not h.receiver.seen:
        await asyncio.sleep(0.01)
    await h.sandbox.close()
    assert h.sandbox.stats().webhooks_pending == 1
    assert len(h.receiver.seen) == 1
