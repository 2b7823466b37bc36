"""The sandbox on a real server, its webhooks to a real HTTPS receiver on loopback, verified
against a test CA: signatures, which dispatches call back and with what, retries, duplicates,
refused callbacks; and its request log of a client that gave up and retried."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatcher_gateway.httpserver import HttpServer, start_http
from dispatcher_gateway.sandbox import Faults, Sandbox, SandboxSettings, serve_sandbox
from dispatcher_gateway.webhooks import WebhookVerifier
from tests.support.loopback import TlsFiles

EMAIL = "sandbox@example.com"
PASSWORD = "sandbox-e2e-password"
SECRETS = ("whsec-e2e-old", "whsec-e2e-new")
WAIT = 10.0
HOOK_PATH = "/webhooks/dispatcher/token-1"

BODIES: dict[str, dict[str, Any]] = {
    "email": {
        "template": {"id": 1, "data": {}},
        "email": {
            "from": {"email": "noreply@example.com"},
            "to": [{"email": "ada@example.com"}],
            "subject": "Hello",
        },
    },
    "postal": {
        "template": {"id": 6, "data": {}},
        "postal": {
            "to": {
                "name": "Ada Lovelace",
                "addressLine1": "1 rue de la Paix",
                "city": "Paris",
                "postalCode": "75002",
                "country": "FR",
            }
        },
    },
    "esign": {
        "template": {"id": 3, "data": {}},
        "esign": {"documentName": "Contract", "signers": [{"email": "ada@example.com"}]},
    },
}


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> str:
        return str(json.loads(self.body)["event"])

    @property
    def webhook_id(self) -> str:
        return self.headers["x-webhook-id"]


@dataclass
class Receiver:
    """A webhook receiver on real HTTPS; `status` picks each answer by the attempt's number."""

    status: Callable[[int], int] = lambda attempt: 200
    deliveries: list[Delivery] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        self.deliveries.append(Delivery(dict(request.headers), await request.body()))
        return Response(status_code=self.status(len(self.deliveries)))

    def app(self) -> Starlette:
        return Starlette(routes=[Route(HOOK_PATH, self.hook, methods=["POST"])])


@dataclass
class Setup:
    sandbox: Sandbox
    server: HttpServer
    receiver: Receiver
    receiver_server: HttpServer
    client: httpx.AsyncClient

    @property
    def callback(self) -> str:
        return self.receiver_server.url + HOOK_PATH

    async def dispatch(
        self, service: str, *, callback: str | None = None, **top: Any
    ) -> httpx.Response:
        body = {**BODIES[service], "webhookUrl": callback or self.callback, **top}
        return await self.client.post(f"/api/{service}", params={"async": "true"}, json=body)


Start = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def start(tls: TlsFiles) -> AsyncIterator[Start]:
    started: list[Setup] = []

    async def factory(
        receiver: Receiver | None = None,
        *,
        receiver_cert: tuple[str, str] | None = None,
        sandbox_tls: bool = False,
        **changes: Any,
    ) -> Setup:
        receiver = receiver or Receiver()
        values: dict[str, Any] = {
            "email": EMAIL,
            "password": PASSWORD,
            "webhook_secrets": SECRETS,
            "callback_ca": tls.ca,
            "time_factor": 0.0001,
        }
        values.update(changes)
        cert, key = receiver_cert or (tls.cert, tls.key)
        receiver_server = await start_http(
            receiver.app(), "127.0.0.1", 0, certfile=cert, keyfile=key
        )
        sandbox_cert = {"certfile": tls.cert, "keyfile": tls.key} if sandbox_tls else {}
        sandbox, server = await serve_sandbox(
            SandboxSettings(**values), "127.0.0.1", 0, **sandbox_cert
        )
        client = httpx.AsyncClient(
            base_url=server.url,
            auth=(EMAIL, PASSWORD),
            verify=ssl.create_default_context(cafile=tls.ca),
            trust_env=False,
        )
        setup = Setup(sandbox, server, receiver, receiver_server, client)
        started.append(setup)
        return setup

    yield factory
    for setup in started:
        await setup.client.aclose()
        await setup.sandbox.close()
        await setup.server.stop()
        await setup.receiver_server.stop()


async def test_webhook_signatures_verify_over_https(start: Start) -> None:
    setup = await start()
    answer = await setup.dispatch("esign")
    assert answer.status_code == 202
    await setup.sandbox.wait_for_webhooks(WAIT)
    [delivery] = setup.receiver.deliveries
    for secret in SECRETS:
        webhook_id = WebhookVerifier([secret]).verify(delivery.body, delivery.headers).id
        assert webhook_id == delivery.webhook_id
    assert json.loads(delivery.body)["dispatchId"] == answer.json()["dispatchId"]


async def test_standard_webhooks_signatures_verify_over_https(start: Start) -> None:
    setup = await start(signature_scheme="standard")
    await setup.dispatch("esign")
    await setup.sandbox.wait_for_webhooks(WAIT)
    [delivery] = setup.receiver.deliveries
    webhook_id = WebhookVerifier([SECRETS[1]]).verify(delivery.body, delivery.headers).id
    assert webhook_id == delivery.headers["webhook-id"]


@pytest.mark.parametrize(
    ("service", "provider", "events"),
    [
        ("postal", "mysendingbox", ["letter_created", "letter_in_transit", "letter_delivered"]),
        ("esign", "signaturit", ["document_signed"]),
        ("esign", "universign", ["signer_signed", "transaction_completed"]),
    ],
)
async def test_each_provider_that_calls_back_sends_its_sequence_over_https(
    start: Start, service: str, provider: str, events: list[str]
) -> None:
    setup = await start()
    await setup.dispatch(service, providerName=provider)
    await setup.sandbox.wait_for_webhooks(WAIT)
    assert [d.event for d in setup.receiver.deliveries] == events
    envelopes = [json.loads(d.body) for d in setup.receiver.deliveries]
    assert {(e["service"], e["provider"]) for e in envelopes} == {(service, provider)}


@pytest.mark.parametrize(
    ("service", "provider"), [("email", "sendgrid"), ("esign", "yousign"), ("postal", "lob")]
)
async def test_an_async_dispatch_that_does_not_call_back_gets_202_and_no_webhook(
    start: Start, service: str, provider: str
) -> None:
    setup = await start()
    answer = await setup.dispatch(service, providerName=provider)
    assert answer.status_code == 202
    assert answer.json()["status"] == "queued"
    await setup.sandbox.wait_for_webhooks(WAIT)
    stats = (await setup.client.get("/_sandbox/stats")).json()
    assert (stats["dispatches"], stats["webhooks_sent"]) == (1, 0)
    assert setup.receiver.deliveries == []


async def test_webhooks_answered_500_are_retried_until_2xx(start: Start) -> None:
    setup = await start(Receiver(status=lambda attempt: 500 if attempt <= 2 else 200))
    await setup.dispatch("esign")
    await setup.sandbox.wait_for_webhooks(WAIT)
    deliveries = setup.receiver.deliveries
    assert len(deliveries) == 3
    assert len({d.webhook_id for d in deliveries}) == 1
    stats = (await setup.client.get("/_sandbox/stats")).json()
    assert (stats["webhooks_sent"], stats["webhooks_failed"], stats["webhooks_delivered"]) == (
        3,
        2,
        1,
    )


async def test_duplicates_share_the_webhook_id(start: Start) -> None:
    setup = await start(faults=Faults(duplicate_deliveries=3))
    await setup.dispatch("postal")
    await setup.sandbox.wait_for_webhooks(WAIT)
    by_id: dict[str, list[str]] = {}
    for delivery in setup.receiver.deliveries:
        by_id.setdefault(delivery.webhook_id, []).append(delivery.event)
    assert len(by_id) == 3
    assert all(len(events) == 3 and len(set(events)) == 1 for events in by_id.values())


async def test_lost_webhooks_never_reach_the_receiver(start: Start) -> None:
    setup = await start(faults=Faults(webhook_loss_rate=1.0))
    answer = await setup.dispatch("postal")
    assert answer.status_code == 202
    await setup.sandbox.wait_for_webhooks(WAIT)
    record = (await setup.client.get(f"/_sandbox/dispatches/{answer.json()['dispatchId']}")).json()
    assert record["webhooksLost"] is True
    assert setup.receiver.deliveries == []


async def test_a_late_progress_event_comes_signed_under_a_new_id(start: Start) -> None:
    setup = await start(faults=Faults(late_progress_rate=1.0))
    await setup.dispatch("postal")
    await setup.sandbox.wait_for_webhooks(WAIT)
    deliveries = setup.receiver.deliveries
    assert [d.event for d in deliveries][-2:] == ["letter_delivered", "letter_in_transit"]
    assert len({d.webhook_id for d in deliveries}) == 4
    WebhookVerifier([SECRETS[0]]).verify(deliveries[-1].body, deliveries[-1].headers)


async def test_http_callbacks_are_refused(start: Start) -> None:
    setup = await start()
    plain = setup.callback.replace("https://", "http://")
    answer = await setup.dispatch("email", callback=plain)
    assert answer.status_code == 400
    assert answer.json()["details"]["field"] == "webhookUrl"
    assert setup.sandbox.stats().dispatches == 0
    assert setup.receiver.deliveries == []


async def test_a_receiver_the_ca_does_not_vouch_for_gets_nothing(
    start: Start, tmp_path: Path
) -> None:
    stranger = trustme.CA().issue_cert("127.0.0.1")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    stranger.cert_chain_pems[0].write_to_path(cert)
    stranger.private_key_pem.write_to_path(key)
    setup = await start(receiver_cert=(cert, key), time_factor=0.000001)
    answer = await setup.dispatch("esign")
    await setup.sandbox.wait_for_webhooks(WAIT)
    record = setup.sandbox.get_dispatch(answer.json()["dispatchId"])
    assert record is not None
    assert set(record.webhooks[0].outcomes) == {"tls_error"}
    assert setup.sandbox.stats().webhooks_given_up == 1
    assert setup.receiver.deliveries == []


async def test_request_log_keeps_an_attempt_whose_client_gave_up_and_its_retry(
    start: Start,
) -> None:
    setup = await start(faults=Faults(timeout_rate=1.0, timeout_delay=0.5))
    body = {**BODIES["esign"], "webhookUrl": setup.callback}
    with pytest.raises(httpx.ReadTimeout):
        await setup.client.post(
            "/api/esign",
            params={"async": "true"},
            json=body,
            headers={"X-Request-ID": "req-gave-up", "X-Idempotency-Key": "job-e2e"},
            timeout=0.1,
        )
    setup.sandbox.faults.timeout_rate = 0.0
    retry = await setup.client.post(
        "/api/esign",
        params={"async": "true"},
        json=body,
        headers={"X-Request-ID": "req-retry", "X-Idempotency-Key": "job-e2e"},
    )
    assert retry.status_code == 202
    async with asyncio.timeout(WAIT):
        while setup.sandbox.requests[0].status is None:
            await asyncio.sleep(0.05)
    answer = await setup.client.get("/_sandbox/requests", params={"idempotencyKey": "job-e2e"})
    logged = [
        (r["requestId"], r["status"], r["dispatchId"], r["replayed"])
        for r in answer.json()["requests"]
    ]
    dispatch_id = retry.json()["dispatchId"]
    assert logged == [
        ("req-gave-up", 202, dispatch_id, False),
        ("req-retry", 202, dispatch_id, True),
    ]


async def test_the_sandbox_itself_serves_https(start: Start) -> None:
    setup = await start(sandbox_tls=True)
    assert setup.server.url.startswith("https://")
    answer = await setup.dispatch("email")
    assert answer.status_code == 202
    health = await setup.client.get("/healthz")
    assert health.json() == {"status": "ok"}
