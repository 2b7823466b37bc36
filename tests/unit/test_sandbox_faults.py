"""Each fault knob of the sandbox, its settings, and the run-time control of both, in process."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from dispatcher_gateway.sandbox import Faults, Sandbox, SandboxSettings
from tests.support.sandbox import CALLBACK, EMAIL, PASSWORD, assert_error, ok_transport, valid_body


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    settings = SandboxSettings(email=EMAIL, password=PASSWORD, time_factor=0.0001, seed=7)
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


async def timed_post(
    client: httpx.AsyncClient, path: str, **kwargs: object
) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = await client.post(path, **kwargs)  # type: ignore[arg-type]
    return time.monotonic() - started, response


# error_rate


async def test_error_rate_answers_a_5xx_error_body_and_dispatches_nothing(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.error_rate = 1.0
    statuses = set()
    for _ in range(12):
        response = await client.post("/api/sms", json=valid_body("sms"))
        assert response.status_code in (500, 502, 503)
        assert response.json()["error"] in ("internal_error", "bad_gateway", "service_unavailable")
        statuses.add(response.status_code)
    assert len(statuses) > 1
    assert sandbox.stats().dispatches == 0


async def test_request_log_records_each_5xx_with_its_request_id(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.error_rate = 1.0
    answers = [
        await client.post("/api/sms", json=valid_body("sms"), headers={"X-Request-ID": f"req-{i}"})
        for i in range(3)
    ]
    assert [(e.request_id, e.status) for e in sandbox.requests] == [
        (f"req-{i}", a.status_code) for i, a in enumerate(answers)
    ]
    assert all(500 <= a.status_code < 600 for a in answers)


async def test_refuse_next_answers_the_next_requests_in_order_then_processes(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.update({"refuse_next": [503, 429, 502]})
    statuses = [(await client.post("/api/sms", json=valid_body("sms"))).status_code for _ in "1234"]
    assert statuses == [503, 429, 502, 200]
    assert [r.status for r in sandbox.requests] == statuses
    assert sandbox.faults.refuse_next == []
    assert sandbox.stats().dispatches == 1


def test_refuse_next_takes_only_the_statuses_of_a_refusal() -> None:
    with pytest.raises(ValueError, match="refuse_next"):
        Faults().update({"refuse_next": [200]})


async def test_faults_spare_validate(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    sandbox.faults.update({"error_rate": 1.0, "rate_limit_rate": 1.0, "latency": 5.0})
    response = await asyncio.wait_for(
        client.post("/api/sms/validate", json=valid_body("sms")), timeout=2
    )
    assert response.status_code == 200


async def test_faults_spare_templates(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    sandbox.faults.error_rate = 1.0
    response = await client.get("/api/v1/templates")
    assert response.status_code == 200


async def test_a_partial_error_rate_fails_some_and_passes_some(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.error_rate = 0.5
    statuses = [
        (await client.post("/api/sms", json=valid_body("sms"))).status_code for _ in range(40)
    ]
    assert 0 < statuses.count(200) < 40


# rate_limit_rate


async def test_rate_limit_rate_answers_429_with_retry_after_seconds(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.update({"rate_limit_rate": 1.0, "retry_after": 1.5})
    response = await client.post("/api/sms", json=valid_body("sms"))
    assert_error(response, 429, "rate_limited")
    assert response.headers["Retry-After"] == "2"
    assert sandbox.stats().dispatches == 0


async def test_request_log_records_a_429_with_its_request_id(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.rate_limit_rate = 1.0
    await client.post("/api/sms", json=valid_body("sms"), headers={"X-Request-ID": "req-429"})
    [entry] = sandbox.requests
    assert (entry.request_id, entry.status, entry.dispatch_id) == ("req-429", 429, None)


async def test_retry_after_as_an_http_date(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    sandbox.faults.update(
        {"rate_limit_rate": 1.0, "retry_after": 30, "retry_after_http_date": True}
    )
    response = await client.post("/api/sms", json=valid_body("sms"))
    assert response.status_code == 429
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
    assert response.headers["Retry-After"].endswith("GMT")
    assert 28 <= when.timestamp() - time.time() <= 31


async def test_rate_limit_setting_refuses_beyond_the_limit() -> None:
    settings = SandboxSettings(email=EMAIL, password=PASSWORD, rate_limit=3, rate_window=60)
    sandbox = Sandbox(settings)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app), base_url="http://s", auth=(EMAIL, PASSWORD)
        ) as client:
            statuses = [
                (await client.post("/api/sms", json=valid_body("sms"))).status_code
                for _ in range(5)
            ]
            last = await client.post("/api/sms", json=valid_body("sms"))
    finally:
        await sandbox.close()
    assert statuses == [200, 200, 200, 429, 429]
    assert 0 < int(last.headers["Retry-After"]) <= 60


# timeout_rate


async def test_timeout_rate_accepts_at_once_but_answers_late(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.update({"timeout_rate": 1.0, "timeout_delay": 0.5})
    task = asyncio.create_task(client.post("/api/sms", json=valid_body("sms")))
    await asyncio.sleep(0.1)
    assert not task.done()
    assert sandbox.stats().dispatches == 1
    response = await task
    assert response.status_code == 200


async def test_request_log_shows_a_held_back_answer_as_still_to_come(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.update({"timeout_rate": 1.0, "timeout_delay": 0.5})
    task = asyncio.create_task(client.post("/api/sms", json=valid_body("sms")))
    await asyncio.sleep(0.1)
    [entry] = sandbox.requests
    assert entry.status is None
    await task
    assert (entry.status, entry.dispatch_id) == (200, sandbox.dispatches[0].dispatch_id)


async def test_a_retry_after_a_timeout_gets_the_same_dispatch(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.update({"timeout_rate": 1.0, "timeout_delay": 5.0})
    body = valid_body("email", webhookUrl=CALLBACK)
    headers = {"X-Idempotency-Key": "job-timeout"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            client.post("/api/email?async=true", json=body, headers=headers), 0.2
        )
    sandbox.faults.timeout_rate = 0.0
    retry = await client.post("/api/email?async=true", json=body, headers=headers)
    assert retry.status_code == 202
    assert [d.dispatch_id for d in sandbox.dispatches] == [retry.json()["dispatchId"]]


async def test_close_cuts_a_held_back_answer_short(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.update({"timeout_rate": 1.0, "timeout_delay": 60.0})
    task = asyncio.create_task(client.post("/api/sms", json=valid_body("sms")))
    await asyncio.sleep(0.05)
    await sandbox.close()
    response = await asyncio.wait_for(task, 2)
    assert response.status_code == 200


# latency


async def test_latency_delays_dispatch_requests(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.latency = 0.2
    elapsed, response = await timed_post(client, "/api/sms", json=valid_body("sms"))
    assert response.status_code == 200
    assert elapsed >= 0.2


# fail_rate (sync; the async failure events are in test_sandbox_delivery)


async def test_fail_rate_fails_a_sync_dispatch_with_417(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.fail_rate = 1.0
    response = await client.post("/api/email", json=valid_body("email"))
    assert_error(response, 417, "provider_error")
    assert sandbox.dispatches[0].status == "failed"


async def test_a_failed_sync_dispatch_replays_its_failure(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.fail_rate = 1.0
    headers = {"X-Idempotency-Key": "job-fail"}
    await client.post("/api/email", json=valid_body("email"), headers=headers)
    sandbox.faults.fail_rate = 0.0
    again = await client.post("/api/email", json=valid_body("email"), headers=headers)
    assert again.status_code == 417
    assert sandbox.stats().dispatches == 1


# the upstream breaking the gateway's assumptions


async def test_ignore_idempotency_key_makes_a_new_dispatch_for_each_request_under_a_key(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.ignore_idempotency_key = True
    headers = {"X-Idempotency-Key": "job-ignored"}
    first = await client.post("/api/sms", json=valid_body("sms"), headers=headers)
    again = await client.post("/api/sms", json=valid_body("sms"), headers=headers)
    other = await client.post("/api/email", json=valid_body("email"), headers=headers)
    assert [r.status_code for r in (first, again, other)] == [200, 200, 200]
    assert [r.headers.get("X-Idempotent-Replayed") for r in (first, again, other)] == [None] * 3
    ids = [r.json()["dispatchId"] for r in (first, again, other)]
    assert [d.dispatch_id for d in sandbox.dispatches] == ids
    assert len(set(ids)) == 3
    assert [d.idempotency_key for d in sandbox.dispatches] == ["job-ignored"] * 3
    assert [(r.dispatch_id, r.replayed) for r in sandbox.requests] == [(i, False) for i in ids]


async def test_a_key_honoured_again_replays_its_first_answer(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = {"X-Idempotency-Key": "job-honoured"}
    first = await client.post("/api/sms", json=valid_body("sms"), headers=headers)
    again = await client.post("/api/sms", json=valid_body("sms"), headers=headers)
    assert again.headers["X-Idempotent-Replayed"] == "true"
    assert again.json()["dispatchId"] == first.json()["dispatchId"]
    assert sandbox.stats().dispatches == 1


@pytest.mark.parametrize(
    ("scheme", "id_header"), [("dispatcher", "X-Webhook-Id"), ("standard", "webhook-id")]
)
async def test_omit_webhook_id_sends_webhooks_without_their_id_header(
    scheme: str, id_header: str
) -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        # The first attempt of each event fails: its retry must carry the same body.
        first = sum(1 for r in seen if r.content == request.content) == 1
        return httpx.Response(500 if first else 200)

    settings = SandboxSettings(
        email=EMAIL,
        password=PASSWORD,
        time_factor=0.0001,
        seed=7,
        signature_scheme=scheme,  # type: ignore[arg-type]
        faults=Faults(omit_webhook_id=True),
    )
    sandbox = Sandbox(settings, webhook_transport=httpx.MockTransport(receiver))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(sandbox.app),
            base_url="http://sandbox.test",
            auth=(EMAIL, PASSWORD),
        ) as client:
            body = valid_body("postal", webhookUrl=CALLBACK)
            response = await client.post("/api/postal?async=true", json=body)
            assert response.status_code == 202
            await sandbox.wait_for_webhooks(5.0)
    finally:
        await sandbox.close()
    [record] = sandbox.dispatches
    assert len(seen) == 2 * len(record.webhooks) == 6
    assert [id_header.lower() in r.headers for r in seen] == [False] * 6
    assert all(r.headers["Content-Type"] == "application/json" for r in seen)
    # Each event twice (its failed attempt, its retry), byte for byte the same body.
    assert sorted({r.content for r in seen}) == sorted(w.body for w in record.webhooks)


# control at run time


async def test_faults_are_changed_over_http(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    response = await client.put("/_sandbox/faults", json={"error_rate": 0.25, "shuffle": True})
    assert response.status_code == 200
    assert response.json()["error_rate"] == 0.25
    assert (sandbox.faults.error_rate, sandbox.faults.shuffle) == (0.25, True)


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 2},
        {"error_rate": "high"},
        {"latency": -1},
        {"duplicate_deliveries": 0},
        {"duplicate_deliveries": 1.5},
        {"shuffle": 1},
        {"webhook_loss_rate": 1.5},
        {"webhook_loss_rate": True},
        {"late_progress_rate": -0.1},
        {"late_progress_rate": "often"},
        {"ignore_idempotency_key": 1},
        {"omit_webhook_id": "yes"},
        {"bogus": 1},
    ],
)
async def test_bad_faults_are_refused_and_nothing_changes(
    client: httpx.AsyncClient, sandbox: Sandbox, changes: dict[str, object]
) -> None:
    response = await client.put("/_sandbox/faults", json={"timeout_delay": 9, **changes})
    assert_error(response, 400, "invalid_field")
    assert sandbox.faults == Faults()


async def test_the_webhook_faults_are_changed_over_http(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    response = await client.put(
        "/_sandbox/faults", json={"webhook_loss_rate": 0.1, "late_progress_rate": 1}
    )
    assert response.status_code == 200
    assert (response.json()["webhook_loss_rate"], response.json()["late_progress_rate"]) == (
        0.1,
        1.0,
    )
    assert (sandbox.faults.webhook_loss_rate, sandbox.faults.late_progress_rate) == (0.1, 1.0)


async def test_the_assumption_faults_are_changed_over_http(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    changes = {"ignore_idempotency_key": True, "omit_webhook_id": True}
    response = await client.put("/_sandbox/faults", json=changes)
    assert response.status_code == 200
    assert {k: response.json()[k] for k in changes} == changes
    assert (sandbox.faults.ignore_idempotency_key, sandbox.faults.omit_webhook_id) == (True, True)


async def test_faults_are_read_over_http(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    sandbox.faults.latency = 0.01
    response = await client.get("/_sandbox/faults")
    assert response.json()["latency"] == 0.01


def test_each_sandbox_works_on_its_own_copy_of_the_faults() -> None:
    settings = SandboxSettings(faults=Faults(error_rate=0.5))
    sandbox = Sandbox(settings)
    sandbox.faults.error_rate = 1.0
    assert settings.faults.error_rate == 0.5


# settings


def test_settings_repr_hides_the_password_and_secrets() -> None:
    settings = SandboxSettings(password="hunter2-pass", webhook_secrets=("whsec-abc",))
    assert "hunter2-pass" not in repr(settings)
    assert "whsec-abc" not in repr(settings)


def test_settings_refuse_one_string_as_the_secrets() -> None:
    with pytest.raises(TypeError):
        SandboxSettings(webhook_secrets="one-secret")  # type: ignore[arg-type]


def test_settings_scale_the_retry_schedule_and_the_answer_timeout() -> None:
    settings = SandboxSettings(time_factor=0.01, answer_timeout_floor=0.0)
    assert settings.retry_delays == (0.05, 3.0, 18.0, 72.0, 180.0, 360.0, 360.0)
    assert settings.answer_timeout == pytest.approx(0.15)


def test_the_answer_timeout_has_a_floor() -> None:
    assert SandboxSettings(time_factor=0.0001, answer_timeout_floor=0.5).answer_timeout == 0.5


def test_settings_call_back_for_esign_and_postal_providers_by_default() -> None:
    settings = SandboxSettings()
    assert settings.callback_services == {"esign", "postal"}
    assert settings.callback_providers == {"universign", "signaturit", "mysendingbox"}


@pytest.mark.parametrize(
    "changes",
    [
        {"callback_services": frozenset({"fax"})},
        {"callback_providers": frozenset({"yousign"})},
        {"callback_providers": frozenset({"lob"})},
    ],
)
def test_settings_refuse_callbacks_the_sandbox_has_no_events_for(
    changes: dict[str, frozenset[str]],
) -> None:
    with pytest.raises(ValueError, match="unknown"):
        SandboxSettings(**changes)  # type: ignore[arg-type]


def test_settings_refuse_one_string_as_the_callback_services() -> None:
    with pytest.raises(TypeError):
        SandboxSettings(callback_services="esign")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [{"sync_delay": -1.0}, {"sync_delay": 2.0, "sync_delay_max": 1.0}],
)
def test_settings_refuse_a_sync_delay_range_that_is_not_one(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="sync_delay"):
        SandboxSettings(**changes)  # type: ignore[arg-type]
