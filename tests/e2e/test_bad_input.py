"""docs/design.md's "What bad input gets", one test per row, against a real in-process gateway: gRPC
calls on a real channel, webhooks posted over real HTTPS with the test CA and signed as
Dispatcher signs them."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.core import states
from dispatcher_gateway.core.eventdata import MAX_DEPTH
from dispatcher_gateway.core.model import JobEvent
from dispatcher_gateway.rpc.clients import client_line
from dispatcher_gateway.rpc.convert import event_to_pb
from dispatcher_gateway.store import sqlite as sqlite_store
from dispatcher_gateway.webhooks import DEFAULT_MAX_BODY, STORE_RETRY_AFTER, sign_dispatcher
from tests.support.clients import job_events_until
from tests.support.loopback import WEBHOOK_SECRET, GatewayFactory, RunningSandbox, TlsFiles
from tests.support.requests import email_request, status_details

CALL_TIMEOUT = 10.0
STREAM_TIMEOUT = 10.0
CLIENTS = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}
LOCKED_STORE_WAIT_MS = 200
"""How long the gateway's store waits on a database another connection locked, scaled down
from 5 s so that the store-down row takes a fraction of a second."""


def bearer(client: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {CLIENTS[client]}"),)


async def error_of(call: object) -> grpc.aio.AioRpcError:
    """The error a unary call or a whole stream ends with."""

    async def run() -> None:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async with asyncio.timeout(STREAM_TIMEOUT):
                async for _ in call:
                    pass
        else:
            await call  # type: ignore[misc]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await run()
    return info.value


# gRPC


async def test_invalid_dispatch_is_invalid_argument_with_every_field_violation(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    request = email_request(idempotency_key="k" * 1000)
    request.template.id = 0
    request.email.ClearField("to")
    error = await error_of(stub.Dispatch(request, timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = status_details(error)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    fields = {v.field for v in bad_request.field_violations}
    assert {"template.id", "idempotency_key"} <= fields
    assert any(f.startswith("email") for f in fields)
    assert all(v.description for v in bad_request.field_violations)


async def test_a_cursor_the_gateway_never_issued_is_invalid_argument(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    error = await error_of(stub.Subscribe(pb.SubscribeRequest(after_cursor="not-a-cursor")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = status_details(error)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["after_cursor"]


async def test_unknown_job_is_not_found_for_get_and_watch(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    get = await error_of(stub.GetJob(pb.GetJobRequest(job_id="job_nope"), timeout=CALL_TIMEOUT))
    watch = await error_of(stub.WatchJob(pb.WatchJobRequest(job_id="job_nope")))
    assert get.code() == watch.code() == grpc.StatusCode.NOT_FOUND


async def test_same_idempotency_key_with_another_body_fails_precondition(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    first = await stub.Dispatch(email_request(idempotency_key="order-7"), timeout=CALL_TIMEOUT)
    other = email_request(idempotency_key="order-7", metadata={"changed": "yes"})
    error = await error_of(stub.Dispatch(other, timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert first.job.job_id in (error.details() or "")


@pytest.mark.parametrize(
    "cursor",
    ["²", "٣", "\uff11", "9223372036854775808", "9" * 30, "9" * 5000, "-1", " 1"],
    ids=[
        "superscript",
        "arabic-indic",
        "fullwidth",
        "2**63",
        "30-digits",
        "5000-digits",
        "neg",
        "sp",
    ],
)
async def test_a_cursor_of_other_digits_or_beyond_64_bits_is_invalid_argument(
    stub: pb_grpc.DispatchServiceStub, cursor: str
) -> None:
    error = await error_of(stub.Subscribe(pb.SubscribeRequest(after_cursor=cursor)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "after_cursor: not a cursor this gateway issued"


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 2000 + b"]" * 2000).decode(),
        base64.urlsafe_b64encode(b"[" * 150 + b"]" * 150).decode(),
        # Shaped like the store's own, with a time no float holds: found by tests/fuzz.
        base64.urlsafe_b64encode(b"[1" + b"0" * 309 + b', "job_x"]').decode(),
        "%%% not base64 %%%",
        "x" * 100_000,
    ],
    ids=["nested-2000", "nested-150", "time-beyond-a-double", "not-base64", "100k"],
)
async def test_a_page_token_the_gateway_never_issued_is_invalid_argument(
    stub: pb_grpc.DispatchServiceStub, token: str
) -> None:
    error = await error_of(stub.ListJobs(pb.ListJobsRequest(page_token=token), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "page_token: is not a token this server issued"


def nested_struct(levels: int) -> struct_pb2.Struct:
    top = struct_pb2.Struct()
    inner = top
    for _ in range(levels - 1):
        inner = inner.fields["a"].struct_value
    inner.fields["leaf"].string_value = "x"
    return top


async def test_a_request_that_does_not_decode_is_invalid_argument_logged_in_one_line(
    gateways: GatewayFactory,
    stub: pb_grpc.DispatchServiceStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deep = email_request()
    deep.extra.CopyFrom(nested_struct(34))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        raw = channel.unary_unary("/dispatcher.gateway.v1.DispatchService/Dispatch")
        with caplog.at_level(logging.INFO, logger="dispatcher_gateway.rpc"):
            errors = [
                await error_of(stub.Dispatch(deep, timeout=CALL_TIMEOUT)),
                await error_of(stub.Validate(deep, timeout=CALL_TIMEOUT)),
                await error_of(raw(b"\xff\xff\xff\xff", timeout=CALL_TIMEOUT)),
            ]
    for error in errors:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("the request could not be decoded")
    lines = [r for r in caplog.records if "did not decode" in r.getMessage()]
    assert len(lines) == 3
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    # 32 levels still decode, and go upstream as given.
    shallow = email_request()
    shallow.extra.update({"deep": nested_struct(31)})
    await stub.Validate(shallow, timeout=CALL_TIMEOUT)


async def test_lines_about_bad_input_are_rate_limited(
    gateways: GatewayFactory, gateway: GatewayApp, caplog: pytest.LogCaptureFixture
) -> None:
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        raw = channel.unary_unary("/dispatcher.gateway.v1.DispatchService/GetJob")
        with caplog.at_level(logging.INFO, logger="dispatcher_gateway.rpc"):
            for _ in range(50):
                error = await error_of(raw(b"\x0a\xff", timeout=CALL_TIMEOUT))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len([r for r in caplog.records if "did not decode" in r.getMessage()]) == 10


@pytest.mark.parametrize("mode", [pb.MODE_SYNC, pb.MODE_ASYNC])
async def test_a_callback_url_in_extra_is_refused_in_every_mode(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox, mode: int
) -> None:
    request = email_request(mode=mode)
    request.extra.update({"webhookUrl": "https://anywhere/"})
    error = await error_of(stub.Dispatch(request, timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = status_details(error)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["extra.webhookUrl"]
    assert sandbox.sandbox.requests == []


async def test_a_huge_job_id_is_invalid_argument_and_not_echoed(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    huge = "job_" + "x" * 10_000
    for call in (
        stub.GetJob(pb.GetJobRequest(job_id=huge), timeout=CALL_TIMEOUT),
        stub.WatchJob(pb.WatchJobRequest(job_id=huge)),
        stub.Subscribe(pb.SubscribeRequest(job_ids=[huge])),
    ):
        error = await error_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "xxxxxxxx" not in (error.details() or "")
        assert len(error.details() or "") < 100


# Clients and their jobs


@pytest.fixture
async def authed(gateways: GatewayFactory, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    tokens = tmp_path / "client-tokens"
    tokens.write_text(
        "# CLIENT sha256:HEX\n"
        + "".join(f"{client_line(name, token)}\n" for name, token in CLIENTS.items())
    )
    await gateways.start(client_tokens_file=str(tokens), allow_anonymous=False)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        yield channel


async def test_a_call_without_a_known_token_is_unauthenticated(
    authed: grpc.aio.Channel,
) -> None:
    stub = pb_grpc.DispatchServiceStub(authed)
    wrong = (("authorization", "Bearer not-a-token"),)
    calls = [
        stub.Dispatch(email_request(), timeout=CALL_TIMEOUT),
        stub.Dispatch(email_request(), timeout=CALL_TIMEOUT, metadata=wrong),
        stub.GetJob(pb.GetJobRequest(job_id="job_x"), timeout=CALL_TIMEOUT),
        stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT),
        stub.Subscribe(pb.SubscribeRequest()),
        stub.WatchJob(pb.WatchJobRequest(job_id="job_x"), metadata=wrong),
    ]
    for call in calls:
        assert (await error_of(call)).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_someone_elses_job_is_not_found(authed: grpc.aio.Channel) -> None:
    stub = pb_grpc.DispatchServiceStub(authed)
    alices = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT, metadata=bearer("alice"))
    job_id = alices.job.job_id
    get = await error_of(
        stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT, metadata=bearer("bob"))
    )
    watch = await error_of(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=bearer("bob")))
    unknown = await error_of(
        stub.GetJob(
            pb.GetJobRequest(job_id="job_nope"), timeout=CALL_TIMEOUT, metadata=bearer("bob")
        )
    )
    # Indistinguishable from a job that does not exist: no existence leak.
    assert get.code() == watch.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert (get.details() or "").replace(job_id, "X") == (unknown.details() or "").replace(
        "job_nope", "X"
    )
    mine = await stub.GetJob(
        pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT, metadata=bearer("alice")
    )
    assert mine.job_id == job_id


async def test_list_and_streams_show_only_the_callers_jobs(authed: grpc.aio.Channel) -> None:
    stub = pb_grpc.DispatchServiceStub(authed)
    alices = [
        (await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT, metadata=bearer("alice")))
        for _ in range(2)
    ]
    bobs = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT, metadata=bearer("bob"))
    # The same idempotency key is each client's own: not a conflict, not the other's job.
    keyed = email_request(idempotency_key="shared-key")
    alice_keyed = await stub.Dispatch(keyed, timeout=CALL_TIMEOUT, metadata=bearer("alice"))
    bob_keyed = await stub.Dispatch(keyed, timeout=CALL_TIMEOUT, metadata=bearer("bob"))
    assert alice_keyed.job.job_id != bob_keyed.job.job_id
    bob_ids = {bobs.job.job_id, bob_keyed.job.job_id}

    listed = await stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT, metadata=bearer("bob"))
    assert {j.job_id for j in listed.jobs} == bob_ids

    async def bobs_events() -> list[pb.JobEvent]:
        seen: list[pb.JobEvent] = []
        async for event in stub.Subscribe(pb.SubscribeRequest(), metadata=bearer("bob")):
            seen.append(event)
            if sum(e.terminal for e in seen) == len(bob_ids):
                return seen
        return seen

    events = await asyncio.wait_for(bobs_events(), STREAM_TIMEOUT)
    assert {e.job_id for e in events} == bob_ids
    # Bob asking for Alice's job by id in a filter sees nothing of it either.
    asked = stub.Subscribe(
        pb.SubscribeRequest(job_ids=[alices[0].job.job_id, bobs.job.job_id]),
        metadata=bearer("bob"),
    )
    first = await asyncio.wait_for(asked.read(), STREAM_TIMEOUT)
    asked.cancel()
    assert isinstance(first, pb.JobEvent)
    assert first.job_id == bobs.job.job_id
    watched = [
        e
        async for e in stub.WatchJob(
            pb.WatchJobRequest(job_id=bobs.job.job_id), metadata=bearer("bob")
        )
    ]
    assert {e.job_id for e in watched} == {bobs.job.job_id}


# Webhooks, over real HTTPS


@pytest.fixture
async def https(tls: TlsFiles) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=tls.ca)
    async with httpx.AsyncClient(verify=context, timeout=CALL_TIMEOUT) as client:
        yield client


async def sync_job(stub: pb_grpc.DispatchServiceStub) -> str:
    """A finished job: no webhook of the sandbox's will come for it, only ours."""
    response = await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
    return response.job.job_id


def envelope(event: str = "late_progress", **extra: object) -> bytes:
    body = {"event": event, "timestamp": "2026-02-13T12:30:00Z", "data": {"n": 1}, **extra}
    return json.dumps(body).encode()


def signed(body: bytes, webhook_id: str | None = None) -> dict[str, str]:
    headers = sign_dispatcher(
        WEBHOOK_SECRET,
        body,
        timestamp=int(time.time()),
        webhook_id=webhook_id or f"wh_{uuid.uuid4().hex}",
    )
    return {"content-type": "application/json", **headers}


def url_for(gateways: GatewayFactory, app: GatewayApp, job_id: str) -> str:
    return f"{gateways.webhook_url}/webhooks/dispatcher/{app.gateway.caller.tokens.token(job_id)}"


async def events_of(app: GatewayApp, job_id: str, event_type: str) -> list[str]:
    """The job's stored events of one type (WatchJob ends at the job's terminal event, and these
    come after it)."""
    events = await app.store.read_events(client="anonymous", job_id=job_id)
    return [e.cursor for e in events if e.type == event_type]


async def test_a_signed_webhook_for_a_job_is_recorded(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope()
    response = await https.post(
        url_for(gateways, gateway, job_id), content=body, headers=signed(body)
    )
    assert (response.status_code, response.json()) == (200, {"status": "recorded"})
    assert len(await events_of(gateway, job_id, "late_progress")) == 1


async def test_an_oversized_webhook_is_413(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope(padding="x" * DEFAULT_MAX_BODY)
    response = await https.post(
        url_for(gateways, gateway, job_id), content=body, headers=signed(body)
    )
    assert response.status_code == 413
    assert await events_of(gateway, job_id, "late_progress") == []


async def test_64_kib_of_headers_is_431(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope()
    headers = signed(body) | {"x-padding": "a" * 64 * 1024}

    response = await https.post(url_for(gateways, gateway, job_id), content=body, headers=headers)

    assert (response.status_code, response.json()) == (
        431,
        {"error": "request_header_fields_too_large"},
    )
    assert await events_of(gateway, job_id, "late_progress") == []


# Variants of one row share one gateway: starting one per variant would cost more than the test.


async def test_a_bad_or_missing_signature_is_401_with_no_detail(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope()
    missing = signed(body)
    del missing["X-Webhook-Signature"]
    wrong_secret = signed(body) | sign_dispatcher(
        "not-the-secret", body, timestamp=int(time.time())
    )
    tampered = envelope(event="dispatch_failed")  # sent with the signature of `body`
    # Signed over the body alone, which docs/upstream.md allows: it could be replayed for ever.
    untimed = {"content-type": "application/json"} | sign_dispatcher(WEBHOOK_SECRET, body)
    variants = ((body, missing), (body, wrong_secret), (tampered, signed(body)), (body, untimed))
    for content, headers in variants:
        response = await https.post(
            url_for(gateways, gateway, job_id), content=content, headers=headers
        )
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized"}
    assert await events_of(gateway, job_id, "late_progress") == []
    assert await events_of(gateway, job_id, "dispatch_failed") == []


async def test_an_untimed_signature_is_accepted_when_timestamps_are_not_required(
    gateways: GatewayFactory, https: httpx.AsyncClient
) -> None:
    app = await gateways.start(webhook_require_timestamp=False)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        job_id = await sync_job(pb_grpc.DispatchServiceStub(channel))
    body = envelope()
    headers = {"content-type": "application/json"} | sign_dispatcher(WEBHOOK_SECRET, body)

    response = await https.post(url_for(gateways, app, job_id), content=body, headers=headers)

    assert (response.status_code, response.json()) == (200, {"status": "recorded"})


async def test_an_unknown_job_token_is_404(
    gateways: GatewayFactory, gateway: GatewayApp, https: httpx.AsyncClient
) -> None:
    forged = "job_nope.AAAAAAAAAAAAAAAAAAAAAA"
    # A token the gateway's key really made, for a job it never had.
    unknown_job = gateway.gateway.caller.tokens.token("job_never_created")
    # A MAC that is not ASCII (U+0080, percent-encoded): found by tests/fuzz, it was a 500.
    not_ascii = "job_nope.%C2%80"
    body = envelope()
    for token in (forged, unknown_job, not_ascii):
        response = await https.post(
            f"{gateways.webhook_url}/webhooks/dispatcher/{token}",
            content=body,
            headers=signed(body),
        )
        assert response.status_code == 404
        assert response.json() == {"error": "not_found"}


async def test_a_body_not_declared_json_is_415(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope()
    url = url_for(gateways, gateway, job_id)
    form = signed(body) | {"content-type": "application/x-www-form-urlencoded"}
    undeclared = {k: v for k, v in signed(body).items() if k != "content-type"}
    for headers in (form, undeclared):
        response = await https.post(url, content=body, headers=headers)
        assert (response.status_code, response.json()) == (415, {"error": "unsupported_media_type"})
    assert await events_of(gateway, job_id, "late_progress") == []


async def test_malformed_json_is_400(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    for body in (b"{not json", b"[1, 2]", b'{"data": {}}', b'{"event": 42}'):
        response = await https.post(
            url_for(gateways, gateway, job_id), content=body, headers=signed(body)
        )
        assert response.status_code == 400, body
        assert response.json()["error"] == "bad_request"


def nested(depth: int) -> dict[str, object]:
    data: dict[str, object] = {"leaf": "x"}
    for _ in range(depth - 1):
        data = {"k": data}
    return data


async def test_a_webhook_nested_beyond_what_clients_decode_is_400_and_not_stored(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    url = url_for(gateways, gateway, job_id)
    # 34 levels: beyond clients' protobuf parsers; 600: beyond the gateway's own recursion.
    for depth in (MAX_DEPTH + 1, 34, 600):
        body = json.dumps({"event": "late_progress", "data": nested(depth)}).encode()
        response = await https.post(url, content=body, headers=signed(body))
        assert response.status_code == 400, depth
        assert response.json()["error"] == "invalid_argument"
    assert await events_of(gateway, job_id, "late_progress") == []


async def test_the_deepest_webhook_accepted_reaches_a_subscriber(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    data = nested(MAX_DEPTH)
    body = json.dumps({"event": "late_progress", "data": data}).encode()
    response = await https.post(
        url_for(gateways, gateway, job_id), content=body, headers=signed(body)
    )
    assert response.status_code == 200

    event = (await job_events_until(stub, job_id, "late_progress", STREAM_TIMEOUT))[-1]
    assert json_format.MessageToDict(event.data) == data
    events = await gateway.store.read_events(client="anonymous", job_id=job_id)
    [stored] = [e for e in events if e.type == "late_progress"]
    decoded = pb.JobEvent.FromString(event_to_pb(stored).SerializeToString())
    assert json_format.MessageToDict(decoded.data) == data


async def test_an_undecodable_event_stored_before_the_limit_is_streamed_as_an_error(
    gateway: GatewayApp, stub: pb_grpc.DispatchServiceStub
) -> None:
    job_id = await sync_job(stub)
    job = await gateway.gateway.reads.get_job("anonymous", job_id)
    # As record_webhook stored it before it refused such data: 600 levels made the gateway's own
    # conversion fail with RecursionError, and every resumed stream with it.
    poisoned = JobEvent(
        job_id=job_id,
        client=job.client,
        service=job.service,
        type="late_progress",
        state=job.state,
        data=nested(600),
        metadata=job.metadata,
        event_time=time.time(),
    )
    await gateway.store.append_event(poisoned, dedupe_key=None, apply=states.apply_event)
    body = envelope()
    await gateway.gateway.webhooks.record_webhook(
        gateway.gateway.caller.tokens.token(job_id), json.loads(body), webhook_id="wh-after"
    )

    seen = [e.type for e in await job_events_until(stub, job_id, "late_progress", STREAM_TIMEOUT)]
    assert seen[-2:] == [states.UNDELIVERABLE, "late_progress"]


async def test_a_duplicate_is_200_and_one_event(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope()
    url = url_for(gateways, gateway, job_id)
    answers = [
        await https.post(url, content=body, headers=signed(body, "wh_same")) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["status"] for a in answers] == ["recorded", "duplicate", "duplicate"]
    assert len(await events_of(gateway, job_id, "late_progress")) == 1


async def test_a_replay_under_a_new_id_or_none_is_a_duplicate(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    job_id = await sync_job(stub)
    body = envelope()
    url = url_for(gateways, gateway, job_id)
    captured = signed(body, "wh_original")
    first = await https.post(url, content=body, headers=captured)
    # X-Webhook-Id is not under Dispatcher's signature: a replayer may change it or leave it out.
    new_id = captured | {"X-Webhook-Id": "wh_replayed"}
    no_id = {k: v for k, v in captured.items() if k != "X-Webhook-Id"}
    replays = [await https.post(url, content=body, headers=h) for h in (new_id, no_id)]
    assert first.json() == {"status": "recorded"}
    assert [(r.status_code, r.json()["status"]) for r in replays] == [(200, "duplicate")] * 2
    assert len(await events_of(gateway, job_id, "late_progress")) == 1


async def test_one_jobs_webhook_posted_to_another_jobs_callback_is_not_recorded_there(
    gateways: GatewayFactory,
    gateway: GatewayApp,
    stub: pb_grpc.DispatchServiceStub,
    https: httpx.AsyncClient,
) -> None:
    mine, other = await sync_job(stub), await sync_job(stub)
    their_dispatch = (await gateway.gateway.reads.get_job("anonymous", other)).dispatch_id
    assert their_dispatch
    body = envelope(dispatchId=their_dispatch)

    # Unseen, it is refused like an unknown callback; once recorded on its own job, a copy sent
    # to another job's callback is that webhook again: a duplicate, recorded nowhere.
    wrong = await https.post(url_for(gateways, gateway, mine), content=body, headers=signed(body))
    right = await https.post(url_for(gateways, gateway, other), content=body, headers=signed(body))
    again = await https.post(url_for(gateways, gateway, mine), content=body, headers=signed(body))

    assert (wrong.status_code, wrong.json()) == (404, {"error": "not_found"})
    assert (right.status_code, right.json()) == (200, {"status": "recorded"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await events_of(gateway, mine, "late_progress") == []
    assert len(await events_of(gateway, other, "late_progress")) == 1


async def test_store_down_is_503_so_dispatcher_retries_and_the_retry_lands_once(
    gateways: GatewayFactory,
    https: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", LOCKED_STORE_WAIT_MS)
    app = await gateways.start()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        job_id = await sync_job(stub)
        body = envelope()
        url = url_for(gateways, app, job_id)
        # Another process holds the database's write lock (a backup, an operator's shell).
        holder = sqlite3.connect(gateways.store_path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            refused = await https.post(url, content=body, headers=signed(body, "wh_retry"))
        finally:
            holder.close()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == str(STORE_RETRY_AFTER)
        accepted = await https.post(url, content=body, headers=signed(body, "wh_retry"))
        assert (accepted.status_code, accepted.json()["status"]) == (200, "recorded")
        assert len(await events_of(app, job_id, "late_progress")) == 1
