"""The webhook receiver through httpx.ASGITransport: one test per row of docs/design.md, on what
bad webhook input gets, and the happy path."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dispatcher_gateway.core import hub as hub_module
from dispatcher_gateway.core.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ShuttingDown,
    StoreUnavailable,
)
from dispatcher_gateway.core.hub import LAG_HIGH, LAG_LOW, EventHub
from dispatcher_gateway.core.model import JSON, JobEvent, JobState, Service
from dispatcher_gateway.metrics import Counts, Metrics
from dispatcher_gateway.webhooks import (
    STORE_RETRY_AFTER,
    WebhookVerifier,
    create_webhook_app,
    sign_dispatcher,
    sign_standard,
)

SECRET = "webhook-secret-for-tests"
NOW = 1_800_000_000
TOKEN = "job_01HZX5Q2V3.Zm9vYmFyYmF6cXV4"
MAX_BODY = 1024
ENVELOPE: JSON = {
    "event": "document_signed",
    "timestamp": "2026-02-13T12:30:00Z",
    "dispatchId": "disp_abc123",
    "service": "esign",
    "provider": "signaturit",
    "data": {"documentId": "doc_xyz789", "status": "completed"},
}


class FakeSink:
    """Knows one token; dedupes by webhook id; raises `fail` when set."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, JSON, str]] = []
        self.seen: set[str] = set()
        self.fail: Exception | None = None

    async def record_webhook(self, token: str, envelope: JSON, *, webhook_id: str) -> bool:
        if self.fail is not None:
            raise self.fail
        if token != TOKEN:
            raise NotFound("no such job")
        if webhook_id in self.seen:
            return False
        self.seen.add(webhook_id)
        self.recorded.append((token, envelope, webhook_id))
        return True


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
async def client(sink: FakeSink) -> AsyncIterator[httpx.AsyncClient]:
    verifier = WebhookVerifier([SECRET], clock=lambda: NOW)
    app = create_webhook_app(sink, verifier, max_body=MAX_BODY)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gateway.test", headers=JSON_TYPE
    ) as http:
        yield http


def signed(body: bytes, webhook_id: str = "wh_1") -> dict[str, str]:
    return sign_dispatcher(SECRET, body, timestamp=NOW, webhook_id=webhook_id)


async def post(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str], token: str = TOKEN
) -> httpx.Response:
    return await client.post(f"/webhooks/dispatcher/{token}", content=body, headers=headers)


class CountingBody:
    """A request body streamed in chunks without a Content-Length; counts the chunks pulled."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk = chunk
        self.count = count
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield self.chunk


BODY = json.dumps(ENVELOPE).encode()
JSON_TYPE = {"Content-Type": "application/json"}


# The happy path


async def test_a_signed_webhook_is_recorded(client: httpx.AsyncClient, sink: FakeSink) -> None:
    response = await post(client, BODY, signed(BODY, "wh_42"))

    assert response.status_code == 200
    assert response.json() == {"status": "recorded"}
    # Recorded under what the signature covers: X-Webhook-Id is not signed in this scheme.
    assert sink.recorded == [(TOKEN, ENVELOPE, "sha256:" + hashlib.sha256(BODY).hexdigest())]


async def test_a_standard_webhooks_signature_is_accepted(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    headers = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_7")

    response = await post(client, BODY, headers)

    assert response.status_code == 200
    assert sink.recorded[0][2] == "msg_7"


async def test_a_body_exactly_at_the_cap_is_accepted(client: httpx.AsyncClient) -> None:
    padded = dict(ENVELOPE, pad="")
    padded["pad"] = "x" * (MAX_BODY - len(json.dumps(padded).encode()))
    body = json.dumps(padded).encode()
    assert len(body) == MAX_BODY

    response = await post(client, body, signed(body))

    assert response.status_code == 200


async def test_one_line_per_webhook_debug_when_recorded_info_when_a_duplicate(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="dispatcher_gateway.webhooks"):
        await post(client, BODY, signed(BODY, "wh_9"))
        await post(client, BODY, signed(BODY, "wh_9"))

    records = [r for r in caplog.records if r.name == "dispatcher_gateway.webhooks"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.INFO]
    for record, outcome in zip(records, ("recorded", "duplicate"), strict=True):
        line = record.getMessage()
        for part in (TOKEN[:8], "document_signed", "wh_9", outcome):
            assert part in line
        assert TOKEN not in line


# What bad input gets


async def test_duplicate_is_200(client: httpx.AsyncClient, sink: FakeSink) -> None:
    await post(client, BODY, signed(BODY, "wh_1"))

    response = await post(client, BODY, signed(BODY, "wh_1"))

    assert response.status_code == 200
    assert response.json() == {"status": "duplicate"}
    assert len(sink.recorded) == 1


@pytest.mark.parametrize("replay_id", ["wh_new", None], ids=["new-id", "no-id"])
async def test_a_replay_under_another_id_is_a_duplicate(
    client: httpx.AsyncClient, sink: FakeSink, replay_id: str | None
) -> None:
    captured = signed(BODY, "wh_1")
    await post(client, BODY, captured)
    replayed = {k: v for k, v in captured.items() if k != "X-Webhook-Id"}
    if replay_id is not None:
        replayed["X-Webhook-Id"] = replay_id

    response = await post(client, BODY, replayed)

    assert (response.status_code, response.json()) == (200, {"status": "duplicate"})
    assert len(sink.recorded) == 1


async def test_oversized_by_content_length_is_413_without_reading_the_body(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    body = CountingBody(b"x" * 100, 20)
    headers = {"Content-Length": str(100 * 20)} | signed(b"")

    response = await client.post(f"/webhooks/dispatcher/{TOKEN}", content=body, headers=headers)

    assert response.status_code == 413
    assert body.pulled == 0
    assert sink.recorded == []


async def test_oversized_by_stream_is_413_reading_no_more_than_the_cap(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    body = CountingBody(b"x" * 100, 1000)

    response = await client.post(f"/webhooks/dispatcher/{TOKEN}", content=body, headers={})

    assert response.status_code == 413
    assert body.pulled == MAX_BODY // 100 + 1
    assert sink.recorded == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
    ids=["text", "form", "multipart", "none"],
)
async def test_a_body_that_is_not_declared_json_is_415_without_reading_it(
    client: httpx.AsyncClient, sink: FakeSink, content_type: str
) -> None:
    del client.headers["Content-Type"]
    body = CountingBody(BODY, 1)
    headers = signed(BODY) | ({"Content-Type": content_type} if content_type else {})

    response = await client.post(f"/webhooks/dispatcher/{TOKEN}", content=body, headers=headers)

    assert (response.status_code, response.json()) == (415, {"error": "unsupported_media_type"})
    assert body.pulled == 0
    assert sink.recorded == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/cloud+json"],
)
async def test_json_media_types_with_parameters_are_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await post(client, BODY, signed(BODY) | {"Content-Type": content_type})

    assert response.status_code == 200


async def test_missing_signature_is_401_with_no_detail(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    response = await post(client, BODY, {"X-Webhook-Id": "wh_1"})

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert sink.recorded == []


async def test_bad_signature_is_401_with_no_detail(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    headers = sign_dispatcher("not-the-secret", BODY, timestamp=NOW, webhook_id="wh_1")

    response = await post(client, BODY, headers)

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert sink.recorded == []


async def test_a_signature_without_a_timestamp_is_401_with_no_detail(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    headers = sign_dispatcher(SECRET, BODY, webhook_id="wh_1")

    response = await post(client, BODY, headers)

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert sink.recorded == []


async def test_unknown_token_is_404(client: httpx.AsyncClient) -> None:
    response = await post(client, BODY, signed(BODY), token="job_unknown.bWFj")

    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"\xff\xfe\x00garbage",
        b'{"event": "x", "n": NaN}',
    ],
    ids=["syntax", "empty", "not-utf8", "nan"],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, sink: FakeSink, body: bytes
) -> None:
    response = await post(client, body, signed(body))

    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert sink.recorded == []


async def test_json_nested_beyond_the_parsers_depth_is_400(sink: FakeSink) -> None:
    depth = 100_000
    body = b"[" * depth + b"]" * depth
    app = create_webhook_app(sink, WebhookVerifier([SECRET], clock=lambda: NOW))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gateway.test", headers=JSON_TYPE
    ) as http:
        response = await post(http, body, signed(body))

    assert response.status_code == 400


@pytest.mark.parametrize(
    "envelope",
    [[ENVELOPE], "document_signed", {"dispatchId": "d"}, {"event": 7}, {"event": ""}],
    ids=["array", "string", "no-event", "event-not-string", "event-empty"],
)
async def test_json_that_is_not_an_envelope_is_400(
    client: httpx.AsyncClient, envelope: object
) -> None:
    body = json.dumps(envelope).encode()

    response = await post(client, body, signed(body))

    assert response.status_code == 400
    assert response.json()["reason"]


_LONE = '{"event": "dispatch_completed", "data": {"name": "\ud800"}}'


@pytest.mark.parametrize(
    "body",
    [
        _LONE.replace("\ud800", "\\ud800").encode(),
        _LONE.encode("utf-8", "surrogatepass"),
        _LONE.encode("utf-16-le", "surrogatepass"),
    ],
    ids=["escaped", "raw-utf-8", "raw-utf-16"],
)
async def test_an_unpaired_surrogate_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await post(client, body, signed(body))

    assert response.status_code == 400


async def test_a_paired_surrogate_escape_is_fine(client: httpx.AsyncClient) -> None:
    body = b'{"event": "dispatch_completed", "data": {"name": "\\ud83d\\ude00"}}'

    response = await post(client, body, signed(body))

    assert response.status_code == 200


async def test_core_invalid_argument_is_400(client: httpx.AsyncClient, sink: FakeSink) -> None:
    sink.fail = InvalidArgument([FieldViolation("event", "unknown for this service")])

    response = await post(client, BODY, signed(BODY))

    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_argument",
        "reason": "event: unknown for this service",
    }


async def test_store_down_is_503_with_retry_after(
    client: httpx.AsyncClient, sink: FakeSink
) -> None:
    sink.fail = StoreUnavailable("sqlite is locked")

    response = await post(client, BODY, signed(BODY))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(STORE_RETRY_AFTER)


async def test_draining_is_503(client: httpx.AsyncClient, sink: FakeSink) -> None:
    sink.fail = ShuttingDown("draining")

    response = await post(client, BODY, signed(BODY))

    assert response.status_code == 503


async def test_an_unexpected_error_is_500_and_logged(
    client: httpx.AsyncClient, sink: FakeSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.fail = RuntimeError("bug")

    with caplog.at_level(logging.INFO, logger="dispatcher_gateway.webhooks"):
        response = await post(client, BODY, signed(BODY))

    assert response.status_code == 500
    assert response.json() == {"error": "internal"}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_get_is_405(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/webhooks/dispatcher/{TOKEN}")

    assert response.status_code == 405


async def test_past_max_in_flight_a_webhook_is_refused_at_once_with_retry_after() -> None:
    release = asyncio.Event()
    entered = 0

    class SlowSink(FakeSink):
        async def record_webhook(self, token: str, envelope: JSON, *, webhook_id: str) -> bool:
            nonlocal entered
            entered += 1
            await release.wait()
            return await super().record_webhook(token, envelope, webhook_id=webhook_id)

    verifier = WebhookVerifier([SECRET], clock=lambda: NOW)
    app = create_webhook_app(SlowSink(), verifier, max_body=MAX_BODY, max_in_flight=2)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gateway.test", headers=JSON_TYPE
    ) as http:
        held = [asyncio.create_task(post(http, BODY, signed(BODY, f"wh_{n}"))) for n in (1, 2)]
        while entered < 2:
            await asyncio.sleep(0)

        refused = await post(http, BODY, signed(BODY, "wh_3"))

        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert refused.status_code == 503
        assert refused.json() == {"error": "overloaded"}
        assert refused.headers["Retry-After"] == str(STORE_RETRY_AFTER)
        assert (await post(http, BODY, signed(BODY, "wh_3"))).status_code == 200


async def test_a_verified_webhook_waits_for_a_lagging_stream_whose_reader_is_reading(
    sink: FakeSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Time limits out of reach: only the stream catching up may release the webhook.
    for name in ("PAUSE_MAX", "READING", "HOLD_MAX"):
        monkeypatch.setattr(hub_module, name, 3600.0)
    hub = EventHub()
    sub = hub.subscribe("svc", lambda e: True)
    for n in range(1, LAG_HIGH + 2):
        hub.publish(
            JobEvent(
                "job_1",
                "svc",
                Service.ESIGN,
                "progress",
                JobState.IN_PROGRESS,
                {},
                {},
                0.0,
                cursor=str(n),
            )
        )
    await sub.get()  # its reader is taking events, and finds LAG_HIGH behind
    verifier = WebhookVerifier([SECRET], clock=lambda: NOW)
    metrics = Metrics()
    app = create_webhook_app(sink, verifier, max_body=MAX_BODY, hub=hub, observer=Counts(metrics))
    async with (
        asyncio.timeout(10),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="https://gateway.test",
            headers=JSON_TYPE,
        ) as http,
    ):
        # One that fails its checks is answered at once, held or not.
        assert (await post(http, BODY, {"X-Webhook-Signature": "sha256=00"})).status_code == 401
        answer = asyncio.create_task(post(http, BODY, signed(BODY)))
        while len(sub.queue) > LAG_LOW:
            await asyncio.sleep(0)
            assert not answer.done()
            assert sink.recorded == []  # held back while the stream catches up
            await sub.get()
        assert (await answer).status_code == 200
        assert len(sink.recorded) == 1
        # The stream caught up: the next webhook is not held.
        other = json.dumps({**ENVELOPE, "event": "document_viewed"}).encode()
        assert (await post(http, other, signed(other, "wh_2"))).status_code == 200
    assert len(sink.recorded) == 2
    assert metrics.registry.get_sample_value("dispatcher_gateway_webhooks_held_total") == 1


async def test_an_outer_layer_appending_answer_headers_adds_one_to_each_answer(
    sink: FakeSink,
) -> None:
    """An outer ASGI layer may append to the header list it is sent (OpenTelemetry's does, with
    a response propagator set): the answers shared by every webhook must not keep what it added."""
    app = create_webhook_app(sink, WebhookVerifier([SECRET], clock=lambda: NOW), max_body=MAX_BODY)

    async def appending(scope: Any, receive: Any, send: Any) -> None:
        async def send_appending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"traceresponse", b"00-1-2-01"))
            await send(message)

        await app(scope, receive, send_appending)

    transport = httpx.ASGITransport(app=appending)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://gateway.test", headers=JSON_TYPE
    ) as http:
        bodies = [json.dumps({**ENVELOPE, "event": f"event_{i}"}).encode() for i in range(3)]
        answers = [await post(http, b, signed(b, f"wh_{i}")) for i, b in enumerate(bodies)]
        answers.append(await post(http, bodies[0], signed(bodies[0], "wh_0")))  # a duplicate

    assert [a.json()["status"] for a in answers] == ["recorded"] * 3 + ["duplicate"]
    assert [len(a.headers.get_list("traceresponse")) for a in answers] == [1, 1, 1, 1]
