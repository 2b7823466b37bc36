"""DispatcherClient against httpx.MockTransport: what it sends, and how it classifies answers."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.core.model import DispatchSpec, Mode, Service
from dispatcher_gateway.upstream import (
    CODE_BAD_RESPONSE,
    CODE_TIMEOUT,
    CODE_UNREACHABLE,
    UPSTREAM_TIMEOUT_CAP,
    USER_AGENT,
    DispatcherClient,
    parse_retry_after,
)

BASE_URL = "https://dispatcher.test"
EMAIL = "gateway@example.com"
PASSWORD = "s3cret-Pa55word"
BASIC_TOKEN = base64.b64encode(f"{EMAIL}:{PASSWORD}".encode()).decode()

Handler = Callable[[httpx.Request], httpx.Response]
MakeClient = Callable[[Handler], DispatcherClient]

SPEC = DispatchSpec(
    services=(Service.FILE, Service.EMAIL),
    mode=Mode.ASYNC,
    body={"template": {"id": 7, "data": {"name": "Ada"}}, "email": {"subject": "hi"}},
)


class Recorder:
    """A MockTransport handler that remembers every request and answers with a fixed response."""

    def __init__(self, response: httpx.Response | Handler) -> None:
        self.requests: list[httpx.Request] = []
        self._response = response

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if callable(self._response):
            return self._response(request)
        return self._response

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("slow", request=request)


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[DispatcherClient] = []

    def make(handler: Handler) -> DispatcherClient:
        client = DispatcherClient(BASE_URL, EMAIL, PASSWORD, transport=httpx.MockTransport(handler))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def accepted() -> httpx.Response:
    return httpx.Response(202, json={"dispatchId": "disp_abc123", "status": "queued"})


async def failure_of(client: DispatcherClient) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await client.dispatch(SPEC, idempotency_key="job-1", callback_url=None, timeout=5)
    return info.value


# What it sends


async def test_sync_dispatch_posts_the_body_to_the_spec_path(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json={"ok": True}))
    client = make_client(recorder)

    answer = await client.dispatch(SPEC, idempotency_key="job-1", callback_url=None, timeout=5)

    assert answer.body == {"ok": True}
    request = recorder.last
    assert request.method == "POST"
    assert request.url.path == "/api/file/email"
    assert "async" not in request.url.params
    assert json.loads(request.content) == SPEC.body
    assert request.headers["Content-Type"] == "application/json"


async def test_every_request_carries_basic_auth(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json=[]))
    client = make_client(recorder)

    await client.templates(timeout=5)

    assert recorder.last.headers["Authorization"] == f"Basic {BASIC_TOKEN}"


async def test_user_agent_names_the_gateway_and_its_version(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json=[]))
    client = make_client(recorder)

    await client.templates(timeout=5)

    assert recorder.last.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("dispatcher-gateway/")


async def test_each_request_gets_its_own_request_id(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json=[]))
    client = make_client(recorder)

    await client.templates(timeout=5)
    await client.templates(timeout=5)

    ids = [r.headers["X-Request-ID"] for r in recorder.requests]
    assert len(set(ids)) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_dispatch_sends_the_idempotency_key(make_client: MakeClient) -> None:
    recorder = Recorder(accepted())
    client = make_client(recorder)

    await client.dispatch(SPEC, idempotency_key="job-42", callback_url=None, timeout=5)

    assert recorder.last.headers["X-Idempotency-Key"] == "job-42"


async def test_no_idempotency_header_without_a_key(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json={}))
    client = make_client(recorder)

    await client.validate(SPEC, timeout=5)

    assert "X-Idempotency-Key" not in recorder.last.headers


async def test_async_dispatch_adds_the_query_and_callback_field(make_client: MakeClient) -> None:
    recorder = Recorder(accepted())
    client = make_client(recorder)
    callback = "https://gw.example.com/webhooks/dispatcher/job-1.mac"

    answer = await client.dispatch(SPEC, idempotency_key="job-1", callback_url=callback, timeout=5)

    assert answer.body["dispatchId"] == "disp_abc123"
    assert recorder.last.url.params["async"] == "true"
    sent = json.loads(recorder.last.content)
    assert sent == {**SPEC.body, "webhookUrl": callback}
    assert "webhookUrl" not in SPEC.body


async def test_a_dispatch_describes_its_attempt_with_the_request_id_answered(
    make_client: MakeClient,
) -> None:
    response = httpx.Response(202, json={"dispatchId": "d"}, headers={"X-Request-ID": "req_up"})
    client = make_client(Recorder(response))

    answer = await client.dispatch(
        SPEC, idempotency_key="k", callback_url="https://x/cb", timeout=5
    )

    attempt = answer.attempt
    assert (attempt.endpoint, attempt.mode, attempt.http_status) == (
        "POST /api/file/email",
        Mode.ASYNC,
        202,
    )
    assert (attempt.request_id, attempt.error_code) == ("req_up", "")
    assert attempt.latency >= 0
    assert abs(attempt.time - time.time()) < 60


async def test_a_refused_dispatch_carries_its_attempt_with_the_error_code(
    make_client: MakeClient,
) -> None:
    body = {"error": "service_unavailable", "message": "down"}
    client = make_client(Recorder(httpx.Response(503, json=body)))

    with pytest.raises(UpstreamError) as caught:
        await client.dispatch(SPEC, idempotency_key="k", callback_url=None, timeout=5)

    attempt = caught.value.attempt
    assert attempt is not None
    assert (attempt.mode, attempt.http_status, attempt.error_code) == (
        Mode.SYNC,
        503,
        "service_unavailable",
    )
    assert attempt.request_id == caught.value.attempt.request_id != ""


async def test_a_dispatch_with_no_answer_carries_its_attempt_with_status_0(
    make_client: MakeClient,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = make_client(refuse)

    with pytest.raises(UpstreamError) as caught:
        await client.dispatch(SPEC, idempotency_key="k", callback_url=None, timeout=5)

    attempt = caught.value.attempt
    assert attempt is not None
    assert (attempt.http_status, attempt.error_code) == (0, "upstream_unreachable")


async def test_callback_field_name_is_configurable() -> None:
    recorder = Recorder(accepted())
    async with DispatcherClient(
        BASE_URL,
        EMAIL,
        PASSWORD,
        transport=httpx.MockTransport(recorder),
        callback_field="callbackUrl",
    ) as client:
        await client.dispatch(SPEC, idempotency_key="k", callback_url="https://x/cb", timeout=5)

    assert json.loads(recorder.last.content)["callbackUrl"] == "https://x/cb"


async def test_validate_posts_to_the_validate_path(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json={"valid": True}))
    client = make_client(recorder)

    assert await client.validate(SPEC, timeout=5) == {"valid": True}
    assert recorder.last.method == "POST"
    assert recorder.last.url.path == "/api/file/email/validate"


async def test_templates_accepts_a_bare_list(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(200, json=[{"id": 1}, {"id": 2}])))

    assert await client.templates(timeout=5) == [{"id": 1}, {"id": 2}]


async def test_templates_accepts_a_wrapped_list(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json={"templates": [{"id": 3}]}))
    client = make_client(recorder)

    assert await client.templates(timeout=5) == [{"id": 3}]
    assert recorder.last.method == "GET"
    assert recorder.last.url.path == "/api/v1/templates"


async def test_templates_refuses_a_list_of_non_objects(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(200, json=[1, 2])))

    with pytest.raises(UpstreamError) as info:
        await client.templates(timeout=5)

    assert info.value.failure.code == CODE_BAD_RESPONSE


# How it classifies answers


async def test_400_is_final_and_carries_the_upstream_error_body(make_client: MakeClient) -> None:
    body = {
        "error": "validation_error",
        "message": "template.id is required",
        "details": {"field": "template.id"},
        "requestId": "req_1",
    }
    client = make_client(Recorder(httpx.Response(400, json=body)))

    exc = await failure_of(client)

    assert not exc.retryable
    assert not exc.timeout
    assert exc.failure.code == "validation_error"
    assert exc.failure.message == "template.id is required"
    assert exc.failure.http_status == 400
    assert exc.failure.details == body


@pytest.mark.parametrize("status", [404, 409, 415, 417])
async def test_other_4xx_are_final(make_client: MakeClient, status: int) -> None:
    client = make_client(Recorder(httpx.Response(status, json={"error": "nope", "message": "m"})))

    exc = await failure_of(client)

    assert not exc.retryable
    assert exc.failure.http_status == status


async def test_429_is_retryable(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(429, json={"error": "rate_limited"})))

    exc = await failure_of(client)

    assert exc.retryable
    assert exc.failure.code == "rate_limited"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_are_retryable(make_client: MakeClient, status: int) -> None:
    client = make_client(Recorder(httpx.Response(status, text="<html>oops</html>")))

    exc = await failure_of(client)

    assert exc.retryable
    assert exc.failure.http_status == status


async def test_a_non_json_error_body_falls_back_to_status_and_reason(
    make_client: MakeClient,
) -> None:
    client = make_client(Recorder(httpx.Response(502, text="Bad Gateway from the proxy")))

    exc = await failure_of(client)

    assert exc.failure.code == "http_502"
    assert exc.failure.message == "Bad Gateway"
    assert exc.failure.details == {}


async def test_an_error_code_or_message_no_client_could_read_falls_back(
    make_client: MakeClient,
) -> None:
    body = b'{"error": "bad\\ud800", "message": "\\udfff"}'
    client = make_client(Recorder(httpx.Response(400, content=body)))

    exc = await failure_of(client)

    assert (exc.failure.code, exc.failure.message) == ("http_400", "Bad Request")


async def test_an_unknown_status_without_a_body_still_has_a_message(
    make_client: MakeClient,
) -> None:
    client = make_client(Recorder(httpx.Response(599)))

    exc = await failure_of(client)

    assert exc.retryable
    assert exc.failure.code == "http_599"
    assert exc.failure.message == "HTTP 599"


async def test_a_redirect_is_not_followed_and_is_final(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(301, headers={"Location": "https://elsewhere.test/"}))
    client = make_client(recorder)

    exc = await failure_of(client)

    assert len(recorder.requests) == 1
    assert not exc.retryable
    assert exc.failure.http_status == 301


async def test_retry_after_in_delta_seconds(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(429, headers={"Retry-After": "17"})))

    exc = await failure_of(client)

    assert exc.retry_after == 17.0


async def test_retry_after_as_an_http_date(make_client: MakeClient) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    client = make_client(Recorder(httpx.Response(503, headers={"Retry-After": when})))

    exc = await failure_of(client)

    assert exc.retry_after is not None
    assert 115 <= exc.retry_after <= 121


async def test_a_retry_after_date_in_the_past_is_zero() -> None:
    now = 1_800_000_000.0
    past = email.utils.formatdate(now - 60, usegmt=True)

    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3", "Mon, 99 Foo 2026"])
async def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=0.0) is None


async def test_no_retry_after_header_means_none(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(500)))

    exc = await failure_of(client)

    assert exc.retry_after is None


async def test_a_timeout_is_retryable_and_marked(make_client: MakeClient) -> None:
    client = make_client(time_out)

    exc = await failure_of(client)

    assert exc.timeout
    assert exc.retryable
    assert exc.failure.code == CODE_TIMEOUT
    assert exc.failure.http_status == 0


async def test_the_whole_exchange_is_bounded_by_the_callers_timeout() -> None:
    class SlowTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(10)
            return httpx.Response(200, json={})

    started = time.monotonic()
    async with DispatcherClient(BASE_URL, EMAIL, PASSWORD, transport=SlowTransport()) as client:
        with pytest.raises(UpstreamError) as info:
            await client.dispatch(SPEC, idempotency_key="k", callback_url=None, timeout=0.05)

    assert info.value.timeout
    assert time.monotonic() - started < 2


async def test_a_spent_deadline_sends_nothing(make_client: MakeClient) -> None:
    recorder = Recorder(accepted())
    client = make_client(recorder)

    with pytest.raises(UpstreamError) as info:
        await client.dispatch(SPEC, idempotency_key="k", callback_url=None, timeout=0)

    assert info.value.timeout
    assert recorder.requests == []


async def test_the_timeout_is_capped_at_the_upstreams_own(make_client: MakeClient) -> None:
    recorder = Recorder(httpx.Response(200, json={}))
    client = make_client(recorder)

    await client.dispatch(SPEC, idempotency_key="k", callback_url=None, timeout=3600)

    assert recorder.last.extensions["timeout"]["read"] == UPSTREAM_TIMEOUT_CAP


async def test_a_connection_error_is_retryable(make_client: MakeClient) -> None:
    client = make_client(refuse_connection)

    exc = await failure_of(client)

    assert exc.retryable
    assert not exc.timeout
    assert exc.failure.code == CODE_UNREACHABLE
    assert exc.failure.http_status == 0


async def test_a_non_json_2xx_is_a_retryable_bad_response(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(200, text="<html>maintenance</html>")))

    exc = await failure_of(client)

    assert exc.retryable
    assert exc.failure.code == CODE_BAD_RESPONSE
    assert exc.failure.http_status == 0
    assert "HTTP 200" in exc.failure.message


async def test_a_non_object_2xx_is_a_bad_response(make_client: MakeClient) -> None:
    client = make_client(Recorder(httpx.Response(202, json=["disp_1"])))

    exc = await failure_of(client)

    assert exc.failure.code == CODE_BAD_RESPONSE


# Secrets


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_logged_at_error(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    client = make_client(Recorder(httpx.Response(status, json={"error": "unauthorized"})))

    with caplog.at_level(logging.DEBUG):
        exc = await failure_of(client)

    assert not exc.retryable
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "dispatcher_gateway.upstream"
    assert "credentials were refused" in errors[0].getMessage()


@pytest.mark.parametrize("status", [401, 403])
async def test_what_the_upstream_says_of_refused_credentials_stays_in_the_log(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    said = "Bad credentials for account gateway@example.com from 203.0.113.7"
    body = {"error": "unauthorized", "message": said, "requestId": "req_1"}
    client = make_client(Recorder(httpx.Response(status, json=body)))

    with caplog.at_level(logging.ERROR):
        exc = await failure_of(client)

    assert exc.failure.message == "the gateway's upstream credentials were refused"
    assert exc.failure.code == "upstream_credentials_refused"
    assert (exc.failure.http_status, exc.failure.details) == (status, {})
    assert "203.0.113.7" not in str(exc) + repr(exc.failure)
    assert exc.attempt is not None
    assert exc.attempt.error_code == "upstream_credentials_refused"
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert said in line


async def test_one_debug_line_per_request(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(accepted())
    client = make_client(recorder)

    with caplog.at_level(logging.DEBUG, logger="dispatcher_gateway.upstream"):
        await client.dispatch(SPEC, idempotency_key="k", callback_url=None, timeout=5)

    lines = [r.getMessage() for r in caplog.records if r.name == "dispatcher_gateway.upstream"]
    assert len(lines) == 1
    assert "POST /api/file/email -> 202" in lines[0]
    assert recorder.last.headers["X-Request-ID"] in lines[0]


@pytest.mark.parametrize(
    "answer",
    [
        Recorder(httpx.Response(401, json={"error": "unauthorized", "message": "bad"})),
        Recorder(httpx.Response(500, text="boom")),
        Recorder(httpx.Response(200, text="not json")),
        refuse_connection,
        time_out,
    ],
    ids=["401", "500", "bad-2xx", "connect-error", "timeout"],
)
async def test_no_secret_in_logs_reprs_or_errors(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, answer: Handler
) -> None:
    client = make_client(answer)

    with caplog.at_level(logging.DEBUG):
        exc = await failure_of(client)

    exposed = " ".join(
        [caplog.text, str(exc), repr(exc), repr(exc.failure), repr(client), str(exc.__cause__)]
    )
    for secret in (PASSWORD, BASIC_TOKEN, "Authorization"):
        assert secret not in exposed
