"""The sandbox's REST rules, in process: auth, paths, content type, the CompositeRequest checks,
sync and async answers, idempotency, the request log, and the side door."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dispatcher_gateway.sandbox import Sandbox, SandboxSettings
from tests.support.sandbox import (
    CALLBACK,
    EMAIL,
    PASSWORD,
    assert_error,
    ok_transport,
    valid_body,
)


@pytest.fixture
def settings() -> SandboxSettings:
    return SandboxSettings(
        email=EMAIL, password=PASSWORD, webhook_secrets=("s3cret",), time_factor=0.0001
    )


@pytest.fixture
async def sandbox(settings: SandboxSettings) -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(settings, webhook_transport=httpx.MockTransport(ok_transport))
    yield sandbox
    await sandbox.close()


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(sandbox.app),
        base_url="http://sandbox.test",
        auth=(EMAIL, PASSWORD),
    ) as client:
        yield client


# auth


async def test_healthz_needs_no_credentials(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(sandbox.app), base_url="http://sandbox.test"
    ) as anonymous:
        response = await anonymous.get("/healthz")
    assert response.status_code == 200


async def test_missing_credentials_are_refused_with_the_error_body(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(sandbox.app), base_url="http://sandbox.test"
    ) as anonymous:
        response = await anonymous.post("/api/email", json=valid_body("email"))
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_wrong_password_is_refused_and_not_echoed(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(sandbox.app),
        base_url="http://sandbox.test",
        auth=(EMAIL, "guess-password"),
    ) as guesser:
        response = await guesser.get("/api/v1/templates")
    assert_error(response, 401, "unauthorized")
    assert "guess-password" not in response.text


async def test_unknown_endpoint_is_refused_before_found_without_credentials(
    sandbox: Sandbox,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(sandbox.app), base_url="http://sandbox.test"
    ) as anonymous:
        response = await anonymous.post("/api/nothing", json={})
    assert response.status_code == 401


async def test_side_door_needs_no_credentials(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(sandbox.app), base_url="http://sandbox.test"
    ) as anonymous:
        response = await anonymous.get("/_sandbox/stats")
    assert response.status_code == 200


# request ids


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/templates", headers={"X-Request-ID": "req-from-test"})
    assert response.headers["X-Request-ID"] == "req-from-test"


async def test_request_id_is_made_when_absent(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/email", json={})
    assert response.headers["X-Request-ID"].startswith("req_")
    assert response.json()["requestId"] == response.headers["X-Request-ID"]


# paths and media type


@pytest.mark.parametrize("path", ["/api/fax", "/api/email/fax", "/api/email/email", "/api/"])
async def test_unknown_service_path_is_not_found(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, json=valid_body("email"))
    assert_error(response, 404, "endpoint_not_found")


async def test_wrong_method_is_refused_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/email")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


async def test_non_json_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/email", content=b"template=1", headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 415, "unsupported_media_type", "Content-Type")


async def test_json_content_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/sms",
        content=httpx.Request("POST", "/", json=valid_body("sms")).content,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/email", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


async def test_json_that_is_not_an_object_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/email", json=[1, 2])
    assert_error(response, 400, "invalid_request")


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = valid_body("email", metadata={"blob": "x" * (1 << 20)})
    response = await client.post("/api/email", json=body)
    assert_error(response, 413, "payload_too_large")


# the CompositeRequest


def _without(body: dict[str, Any], path: str) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node[key]
    del node[last]
    return body


def _with(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node[key]
    node[last] = value
    return body


@pytest.mark.parametrize(
    ("service", "field"),
    [
        ("email", "template"),
        ("email", "template.id"),
        ("email", "template.data"),
        ("email", "email"),
        ("email", "email.from"),
        ("email", "email.to"),
        ("email", "email.subject"),
        ("sms", "sms.to"),
        ("postal", "postal.to"),
        ("postal", "postal.to.name"),
        ("postal", "postal.to.addressLine1"),
        ("postal", "postal.to.city"),
        ("postal", "postal.to.postalCode"),
        ("postal", "postal.to.country"),
        ("esign", "esign.documentName"),
        ("esign", "esign.signers"),
    ],
)
async def test_missing_required_field_is_400_naming_it(
    client: httpx.AsyncClient, service: str, field: str
) -> None:
    response = await client.post(f"/api/{service}", json=_without(valid_body(service), field))
    assert_error(response, 400, "missing_field", field)


@pytest.mark.parametrize(
    ("service", "field", "value"),
    [
        ("email", "template.id", "1"),
        ("email", "template.id", True),
        ("email", "template.data", []),
        ("email", "metadata", "x"),
        ("email", "email.from", "noreply@example.com"),
        ("email", "email.to", []),
        ("email", "email.subject", ""),
        ("sms", "sms.to", []),
        ("sms", "sms.to", ""),
        ("postal", "postal.to.country", "FRA"),
        ("postal", "postal.to.city", " "),
        ("esign", "esign.signers", []),
        ("esign", "esign.signatureType", "BEST"),
        ("email", "providerName", "mailchimp"),
        ("esign", "providerName", "sendgrid"),
        ("postal", "providerName", ""),
    ],
)
async def test_invalid_field_is_400_naming_it(
    client: httpx.AsyncClient, service: str, field: str, value: Any
) -> None:
    response = await client.post(f"/api/{service}", json=_with(valid_body(service), field, value))
    assert_error(response, 400, "invalid_field", field)


async def test_signer_without_email_is_named_by_index(client: httpx.AsyncClient) -> None:
    body = valid_body("esign")
    body["esign"]["signers"].append({"name": "no email"})
    response = await client.post("/api/esign", json=body)
    assert_error(response, 400, "missing_field", "esign.signers[1].email")


async def test_unknown_template_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/email", json=_with(valid_body("email"), "template.id", 999))
    assert_error(response, 404, "template_not_found", "template.id")


@pytest.mark.parametrize(
    ("service", "provider"),
    [("email", "ses"), ("esign", "yousign"), ("postal", "lob"), ("sms", "anything-sms")],
)
async def test_allowed_provider_is_used(
    client: httpx.AsyncClient, service: str, provider: str
) -> None:
    response = await client.post(f"/api/{service}", json=valid_body(service, providerName=provider))
    assert response.status_code == 200, response.text
    assert response.json()["provider"] == provider


async def test_chain_checks_every_service_block(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/file/postal", json=valid_body("email"))
    assert_error(response, 400, "missing_field", "postal")


# sync


async def test_sync_dispatch_answers_200_with_the_result(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/email", json=valid_body("email"))
    assert response.status_code == 200
    body = response.json()
    assert body["dispatchId"].startswith("disp_")
    assert body["status"] == "completed"
    assert (body["service"], body["provider"]) == ("email", "sendgrid")
    assert body["result"]["messageId"].startswith("msg_")


@pytest.mark.parametrize(
    ("service", "provider", "status", "fields"),
    [
        ("esign", "universign", "sent", {"documentId"}),
        ("esign", "signaturit", "sent", {"documentId"}),
        ("postal", "mysendingbox", "created", {"letterId", "trackingNumber"}),
    ],
)
async def test_sync_answer_of_a_provider_that_calls_back_is_its_immediate_answer(
    client: httpx.AsyncClient, service: str, provider: str, status: str, fields: set[str]
) -> None:
    response = await client.post(f"/api/{service}", json=valid_body(service, providerName=provider))
    assert response.status_code == 200
    result = response.json()["result"]
    assert (result["status"], set(result)) == (status, {"status", *fields})


async def test_chain_answers_for_the_delivering_service(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/file/email", json=valid_body("email"))
    assert response.status_code == 200
    assert response.json()["service"] == "email"


@pytest.mark.parametrize("service", ["invoicing", "file", "upload"])
async def test_services_without_a_block_need_only_the_template(
    client: httpx.AsyncClient, service: str
) -> None:
    response = await client.post(f"/api/{service}", json=valid_body())
    assert response.status_code == 200, response.text
    assert response.json()["service"] == service


async def test_sync_dispatch_takes_the_sync_delay(settings: SandboxSettings) -> None:
    slow = Sandbox(SandboxSettings(email=EMAIL, password=PASSWORD, sync_delay=0.2))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(slow.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            started = asyncio.get_running_loop().time()
            response = await client.post("/api/sms", json=valid_body("sms"))
            elapsed = asyncio.get_running_loop().time() - started
    finally:
        await slow.close()
    assert response.status_code == 200
    assert elapsed >= 0.2


async def test_sync_delay_range_draws_each_answers_time_between_its_bounds() -> None:
    low, high = 0.05, 0.4
    slow = Sandbox(
        SandboxSettings(email=EMAIL, password=PASSWORD, sync_delay=low, sync_delay_max=high, seed=5)
    )
    loop = asyncio.get_running_loop()

    async def timed(client: httpx.AsyncClient) -> float:
        started = loop.time()
        response = await client.post("/api/sms", json=valid_body("sms"))
        assert response.status_code == 200
        return loop.time() - started

    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(slow.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            elapsed = await asyncio.gather(*(timed(client) for _ in range(8)))
    finally:
        await slow.close()
    assert min(elapsed) >= low
    # Above the range only by the machine's own slowness.
    assert max(elapsed) < high + 0.5
    assert max(elapsed) - min(elapsed) > 0.05


async def test_sync_delay_range_spares_async_answers() -> None:
    sandbox = Sandbox(
        SandboxSettings(email=EMAIL, password=PASSWORD, sync_delay=2.0, sync_delay_max=3.0),
        webhook_transport=httpx.MockTransport(ok_transport),
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            response = await asyncio.wait_for(
                client.post(
                    "/api/sms",
                    params={"async": "true"},
                    json=valid_body("sms", webhookUrl=CALLBACK),
                ),
                timeout=1.0,
            )
    finally:
        await sandbox.close()
    assert response.status_code == 202


# async


async def test_async_dispatch_answers_202_queued(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/email", params={"async": "true"}, json=valid_body("email", webhookUrl=CALLBACK)
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["dispatchId"].startswith("disp_")


async def test_async_without_callback_url_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/email", params={"async": "true"}, json=valid_body("email"))
    assert_error(response, 400, "missing_field", "webhookUrl")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "ftp://example.invalid/x", "https://", "not a url"]
)
async def test_async_refuses_a_callback_that_is_not_https(
    client: httpx.AsyncClient, url: str
) -> None:
    response = await client.post(
        "/api/email", params={"async": "true"}, json=valid_body("email", webhookUrl=url)
    )
    assert_error(response, 400, "invalid_field", "webhookUrl")


async def test_async_parameter_must_be_a_boolean(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/email", params={"async": "yes"}, json=valid_body("email", webhookUrl=CALLBACK)
    )
    assert_error(response, 400, "invalid_parameter", "async")


async def test_callback_field_name_is_configurable() -> None:
    sandbox = Sandbox(
        SandboxSettings(email=EMAIL, password=PASSWORD, callback_field="callbackUrl"),
        webhook_transport=httpx.MockTransport(ok_transport),
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            response = await client.post(
                "/api/sms", params={"async": "true"}, json=valid_body("sms", callbackUrl=CALLBACK)
            )
    finally:
        await sandbox.close()
    assert response.status_code == 202


# idempotency


async def test_same_key_replays_the_same_dispatch(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    body = valid_body("email", webhookUrl=CALLBACK)
    headers = {"X-Idempotency-Key": "job-1"}
    first = await client.post("/api/email?async=true", json=body, headers=headers)
    again = await client.post("/api/email?async=true", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["dispatchId"] == first.json()["dispatchId"]
    assert again.headers["X-Idempotent-Replayed"] == "true"
    assert sandbox.stats().dispatches == 1


async def test_same_key_other_request_is_409(client: httpx.AsyncClient) -> None:
    headers = {"X-Idempotency-Key": "job-2"}
    await client.post("/api/email", json=valid_body("email"), headers=headers)
    other = valid_body("email", providerName="ses")
    response = await client.post("/api/email", json=other, headers=headers)
    assert_error(response, 409, "idempotency_key_reused", "X-Idempotency-Key")


async def test_concurrent_uses_of_one_key_share_the_first_answer() -> None:
    sandbox = Sandbox(SandboxSettings(email=EMAIL, password=PASSWORD, sync_delay=0.1))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/api/sms", json=valid_body("sms"), headers={"X-Idempotency-Key": "k"}
                    )
                    for _ in range(4)
                )
            )
    finally:
        await sandbox.close()
    assert {a.json()["dispatchId"] for a in answers} == {answers[0].json()["dispatchId"]}
    assert sandbox.stats().dispatches == 1


async def test_a_refused_request_does_not_use_up_its_key(client: httpx.AsyncClient) -> None:
    headers = {"X-Idempotency-Key": "job-3"}
    refused = await client.post("/api/email", json=valid_body(), headers=headers)
    accepted = await client.post("/api/email", json=valid_body("email"), headers=headers)
    assert (refused.status_code, accepted.status_code) == (400, 200)


async def test_requests_without_a_key_are_distinct_dispatches(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    first = await client.post("/api/sms", json=valid_body("sms"))
    second = await client.post("/api/sms", json=valid_body("sms"))
    assert first.json()["dispatchId"] != second.json()["dispatchId"]
    assert sandbox.stats().dispatches == 2


# the request log


async def test_request_log_records_an_accepted_async_dispatch(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    before = time.time()
    answer = await client.post(
        "/api/postal?async=true",
        json=valid_body("postal", webhookUrl=CALLBACK),
        headers={"X-Request-ID": "req-async-1", "X-Idempotency-Key": "job-log-1"},
    )
    [entry] = sandbox.requests
    assert (entry.request_id, entry.idempotency_key, entry.path, entry.mode) == (
        "req-async-1",
        "job-log-1",
        "/api/postal",
        "async",
    )
    assert (entry.status, entry.dispatch_id, entry.replayed) == (
        202,
        answer.json()["dispatchId"],
        False,
    )
    assert before <= entry.received_at <= time.time()


async def test_request_log_records_the_request_id_the_sandbox_made_up(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    answer = await client.post("/api/sms", json=valid_body("sms"))
    [entry] = sandbox.requests
    assert (entry.request_id, entry.mode, entry.status) == (
        answer.headers["X-Request-ID"],
        "sync",
        200,
    )
    assert entry.idempotency_key == ""


async def test_request_log_records_a_refused_request_without_a_dispatch(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await client.post("/api/sms", json=valid_body(), headers={"X-Request-ID": "req-bad"})
    [entry] = sandbox.requests
    assert (entry.request_id, entry.status, entry.dispatch_id) == ("req-bad", 400, None)


async def test_request_log_records_an_auth_failure_on_a_dispatch_path(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await client.post(
        "/api/esign?async=true",
        json=valid_body("esign"),
        auth=(EMAIL, "wrong"),
        headers={"X-Request-ID": "req-401", "X-Idempotency-Key": "job-401"},
    )
    [entry] = sandbox.requests
    assert (entry.request_id, entry.idempotency_key, entry.mode, entry.status) == (
        "req-401",
        "job-401",
        "async",
        401,
    )


async def test_request_log_records_a_replay_under_its_own_request_id(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    body = valid_body("esign", webhookUrl=CALLBACK)
    for request_id in ("req-first", "req-retry"):
        await client.post(
            "/api/esign?async=true",
            json=body,
            headers={"X-Request-ID": request_id, "X-Idempotency-Key": "job-r"},
        )
    first, retry = sandbox.requests
    assert (first.request_id, retry.request_id) == ("req-first", "req-retry")
    assert retry.dispatch_id == first.dispatch_id
    assert (first.replayed, retry.replayed) == (False, True)


async def test_request_log_leaves_out_requests_that_do_not_dispatch(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await client.post("/api/sms/validate", json=valid_body("sms"))
    await client.get("/api/v1/templates")
    await client.get("/_sandbox/stats")
    assert sandbox.requests == []


async def test_request_log_is_read_over_http_by_idempotency_key(
    client: httpx.AsyncClient,
) -> None:
    for key in ("job-a", "job-b", "job-a"):
        await client.post("/api/sms", json=valid_body("sms"), headers={"X-Idempotency-Key": key})
    every = (await client.get("/_sandbox/requests")).json()["requests"]
    only_a = (await client.get("/_sandbox/requests", params={"idempotencyKey": "job-a"})).json()
    assert [r["idempotencyKey"] for r in every] == ["job-a", "job-b", "job-a"]
    assert [r["requestId"] for r in only_a["requests"]] == [
        every[0]["requestId"],
        every[2]["requestId"],
    ]
    assert set(every[0]) == {
        "requestId",
        "idempotencyKey",
        "path",
        "mode",
        "receivedAt",
        "status",
        "dispatchId",
        "replayed",
        "traceparent",
    }


# validate, templates, config


async def test_validate_accepts_a_valid_request_without_dispatching(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    response = await client.post("/api/file/email/validate", json=valid_body("email"))
    assert response.status_code == 200
    assert response.json()["valid"] is True
    assert response.json()["services"] == ["file", "email"]
    assert sandbox.stats().dispatches == 0
    assert sandbox.stats().dispatch_requests == 0


async def test_validate_reports_the_first_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/email/validate", json=_without(valid_body("email"), "email.to")
    )
    assert_error(response, 400, "missing_field", "email.to")


async def test_templates_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/templates")
    templates = response.json()["templates"]
    assert templates[0] == {
        "id": 1,
        "name": "Welcome letter",
        "description": templates[0]["description"],
        "services": ["email", "postal", "file"],
    }
    services = {s for t in templates for s in t["services"]}
    assert {"esign", "invoicing"} <= services


async def test_template_by_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/templates/3")
    assert response.json()["services"][0] == "esign"


@pytest.mark.parametrize("template_id", ["999", "abc"])
async def test_unknown_template_id_is_404(client: httpx.AsyncClient, template_id: str) -> None:
    response = await client.get(f"/api/v1/templates/{template_id}")
    assert_error(response, 404, "template_not_found")


async def test_config_names_the_user_and_defaults_without_the_password(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/my/config")
    config = response.json()
    assert config["user"]["email"] == EMAIL
    assert config["defaultProviders"]["esign"] == "signaturit"
    assert PASSWORD not in response.text


# the side door


async def test_dispatch_record_shows_what_was_received(client: httpx.AsyncClient) -> None:
    body = valid_body("postal", webhookUrl=CALLBACK, metadata={"order": "A-1"})
    answer = await client.post(
        "/api/file/postal?async=true", json=body, headers={"X-Idempotency-Key": "job-9"}
    )
    dispatch_id = answer.json()["dispatchId"]
    record = (await client.get(f"/_sandbox/dispatches/{dispatch_id}")).json()
    assert record["body"] == body
    assert record["services"] == ["file", "postal"]
    assert record["idempotencyKey"] == "job-9"
    assert record["callbackUrl"] == CALLBACK
    assert (record["callbackService"], record["callbackProvider"]) == ("postal", "mysendingbox")
    assert [w["event"] for w in record["webhooks"]] == [
        "letter_created",
        "letter_in_transit",
        "letter_delivered",
    ]


async def test_unknown_dispatch_record_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/_sandbox/dispatches/disp_nope")
    assert_error(response, 404, "dispatch_not_found")


async def test_stats_count_requests_by_status(client: httpx.AsyncClient) -> None:
    await client.post("/api/sms", json=valid_body("sms"))
    await client.post("/api/sms", json=valid_body())
    await client.post("/api/sms", json=valid_body("sms"), auth=(EMAIL, "wrong"))
    stats = (await client.get("/_sandbox/stats")).json()
    assert stats["dispatch_requests"] == 3
    assert stats["dispatches"] == 1
    assert stats["by_status"] == {"200": 1, "400": 1, "401": 1}
    assert stats["max_in_window"] == 3


async def test_max_in_window_forgets_requests_older_than_the_window() -> None:
    sandbox = Sandbox(SandboxSettings(email=EMAIL, password=PASSWORD, rate_window=0.05))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            for _ in range(3):
                await client.post("/api/sms", json=valid_body("sms"))
                await asyncio.sleep(0.08)
    finally:
        await sandbox.close()
    assert sandbox.stats().max_in_window == 1
    assert sandbox.stats().dispatch_requests == 3
