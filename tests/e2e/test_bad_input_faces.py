"""docs/design.md's "What bad input gets" for callers, on both faces of DispatchService: each row
of tests/e2e/test_bad_input.py's gRPC half runs on gRPC and on JSON over HTTP, and must give the
same status (code, message, field violations). Then what only the JSON face has: its own
undecodable input, and Server-Sent Events resumed from a cursor with no gap and no repeat."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.rpc import json_face as json_face_module
from dispatcher_gateway.rpc.clients import client_line
from tests.support.faces import FACES, Face, Failed, GrpcFace, JsonFace, face_on, sse_events
from tests.support.loopback import GatewayFactory
from tests.support.requests import email_request

CLIENTS = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}
UNDECODABLE = "the request could not be decoded"


@pytest.fixture(params=FACES)
async def face(
    request: pytest.FixtureRequest, gateways: GatewayFactory, gateway: GatewayApp
) -> AsyncIterator[Face]:
    async with face_on(request.param, gateways) as opened:
        yield opened


async def failure(face: Face, method: str, request: object, token: str | None = None) -> Failed:
    with pytest.raises(Failed) as info:
        await face.call(method, request, token)  # type: ignore[arg-type]
    return info.value


def nested_struct(levels: int) -> struct_pb2.Struct:
    top = struct_pb2.Struct()
    inner = top
    for _ in range(levels - 1):
        inner = inner.fields["a"].struct_value
    inner.fields["leaf"].string_value = "x"
    return top


def invalid_dispatch() -> pb.DispatchRequest:
    request = email_request(idempotency_key="k" * 1000)
    request.template.id = 0
    request.email.ClearField("to")
    return request


def with_extra(mode: int, **extra: object) -> pb.DispatchRequest:
    request = email_request(mode=mode)
    request.extra.update(extra)
    return request


def deep(levels: int) -> pb.DispatchRequest:
    request = email_request()
    request.extra.CopyFrom(nested_struct(levels))
    return request


HUGE_JOB_ID = "job_" + "x" * 10_000
CURSORS = ["not-a-cursor", "²", "٣", "\uff11", "9223372036854775808", "9" * 5000, "-1", " 1"]
PAGE_TOKENS = ["%%% not base64 %%%", "x" * 100_000, "W1s="]

# (id, method, request, code, message or None, field violations or None)
TABLE: list[tuple[str, str, object, grpc.StatusCode, str | None, list[str] | None]] = [
    *[
        (
            f"cursor-{i}",
            "Subscribe",
            pb.SubscribeRequest(after_cursor=cursor),
            grpc.StatusCode.INVALID_ARGUMENT,
            "after_cursor: not a cursor this gateway issued",
            ["after_cursor"],
        )
        for i, cursor in enumerate(CURSORS)
    ],
    *[
        (
            f"page-token-{i}",
            "ListJobs",
            pb.ListJobsRequest(page_token=token),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token: is not a token this server issued",
            ["page_token"],
        )
        for i, token in enumerate(PAGE_TOKENS)
    ],
    (
        "get-unknown-job",
        "GetJob",
        pb.GetJobRequest(job_id="job_nope"),
        grpc.StatusCode.NOT_FOUND,
        "job 'job_nope' not found",
        None,
    ),
    (
        "watch-unknown-job",
        "WatchJob",
        pb.WatchJobRequest(job_id="job_nope"),
        grpc.StatusCode.NOT_FOUND,
        "job 'job_nope' not found",
        None,
    ),
    *[
        (
            f"callback-url-in-extra-{name}",
            "Dispatch",
            with_extra(mode, webhookUrl="https://anywhere/"),
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
            ["extra.webhookUrl"],
        )
        for name, mode in (("sync", pb.MODE_SYNC), ("async", pb.MODE_ASYNC))
    ],
    *[
        (
            f"huge-job-id-{method}",
            method,
            request,
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
            [field],
        )
        for method, request, field in (
            ("GetJob", pb.GetJobRequest(job_id=HUGE_JOB_ID), "job_id"),
            ("WatchJob", pb.WatchJobRequest(job_id=HUGE_JOB_ID), "job_id"),
            ("Subscribe", pb.SubscribeRequest(job_ids=[HUGE_JOB_ID]), "job_ids[0]"),
        )
    ],
    *[
        (
            f"nested-34-{method}",
            method,
            deep(34),
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
            [],
        )
        for method in ("Dispatch", "Validate")
    ],
    (
        "live-only-and-a-cursor",
        "Subscribe",
        pb.SubscribeRequest(after_cursor="1", live_only=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "live_only: cannot be combined with after_cursor",
        ["live_only"],
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "message", "violations"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
async def test_bad_input_gets_the_same_status_on_both_faces(
    face: Face,
    method: str,
    request_: object,
    code: grpc.StatusCode,
    message: str | None,
    violations: list[str] | None,
) -> None:
    error = await failure(face, method, request_)
    assert error.code == code
    if message is not None:
        assert error.message == message
    if violations is not None:
        assert error.violations() == violations
    assert "xxxxxxxx" not in error.message
    assert len(error.message) < 200


async def test_a_struct_nested_too_deep_does_not_decode_on_either_face(face: Face) -> None:
    for method in ("Dispatch", "Validate"):
        error = await failure(face, method, deep(34))
        assert error.message.startswith(UNDECODABLE)
    # 32 levels still decode, and go upstream as given.
    shallow = email_request()
    shallow.extra.update({"deep": nested_struct(31)})
    await face.call("Validate", shallow)


async def test_an_invalid_dispatch_lists_every_field_violation(face: Face) -> None:
    error = await failure(face, "Dispatch", invalid_dispatch())
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = set(error.violations())
    assert {"template.id", "idempotency_key"} <= fields
    assert any(f.startswith("email") for f in fields)


async def test_same_idempotency_key_with_another_body_fails_precondition(face: Face) -> None:
    first = await face.call("Dispatch", email_request(idempotency_key="order-7"))
    other = email_request(idempotency_key="order-7", metadata={"changed": "yes"})
    error = await failure(face, "Dispatch", other)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert first.job.job_id in error.message


async def test_an_unexpected_failure_is_internal_never_unknown_with_its_text(
    face: Face,
    gateway: GatewayApp,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "connection to 10.1.2.3 failed: password=hunter2"

    async def templates() -> list[object]:
        raise KeyError(secret)

    async def subscribe(*args: object, **kwargs: object) -> AsyncIterator[object]:
        raise ValueError(secret)
        yield  # an async generator, as the real one

    monkeypatch.setattr(gateway.gateway.dispatches, "templates", templates)
    monkeypatch.setattr(gateway.gateway.streams, "subscribe", subscribe)
    with caplog.at_level(logging.DEBUG):
        errors = [
            await failure(face, "ListTemplates", pb.ListTemplatesRequest()),
            await failure(face, "Subscribe", pb.SubscribeRequest()),
        ]
    for error in errors:
        assert error.code == grpc.StatusCode.INTERNAL
        assert error.message.startswith("internal error in the gateway (ref ")
        assert "hunter2" not in error.message + str(error.details)
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2
    for line, kind in zip(lines, ("KeyError", "ValueError"), strict=True):
        assert line.exc_info is None
        assert "\n" not in line.getMessage()
        assert kind in line.getMessage()


# Clients and their jobs


@pytest.fixture(params=FACES)
async def authed(
    request: pytest.FixtureRequest, gateways: GatewayFactory, tmp_path: Path
) -> AsyncIterator[Face]:
    tokens = tmp_path / "client-tokens"
    tokens.write_text("".join(f"{client_line(n, t)}\n" for n, t in CLIENTS.items()))
    await gateways.start(client_tokens_file=str(tokens), allow_anonymous=False)
    async with face_on(request.param, gateways) as opened:
        yield opened


async def test_a_call_without_a_known_token_is_unauthenticated(authed: Face) -> None:
    for token in (None, "not-a-token"):
        for method, request in (
            ("Dispatch", email_request()),
            ("GetJob", pb.GetJobRequest(job_id="job_x")),
            ("CancelJob", pb.CancelJobRequest(job_id="job_x")),
            ("RetryJob", pb.RetryJobRequest(job_id="job_x")),
            ("ListJobs", pb.ListJobsRequest()),
            ("Subscribe", pb.SubscribeRequest()),
            ("WatchJob", pb.WatchJobRequest(job_id="job_x")),
        ):
            error = await failure(authed, method, request, token)
            assert error.code == grpc.StatusCode.UNAUTHENTICATED, (method, token)


async def test_someone_elses_job_is_not_found_and_unlisted(authed: Face) -> None:
    alice, bob = CLIENTS["alice"], CLIENTS["bob"]
    alices = await authed.call("Dispatch", email_request(), alice)
    job_id = alices.job.job_id
    get = await failure(authed, "GetJob", pb.GetJobRequest(job_id=job_id), bob)
    watch = await failure(authed, "WatchJob", pb.WatchJobRequest(job_id=job_id), bob)
    unknown = await failure(authed, "GetJob", pb.GetJobRequest(job_id="job_nope"), bob)
    cancel = await failure(authed, "CancelJob", pb.CancelJobRequest(job_id=job_id), bob)
    retry = await failure(authed, "RetryJob", pb.RetryJobRequest(job_id=job_id), bob)
    assert get.code == watch.code == unknown.code == grpc.StatusCode.NOT_FOUND
    assert cancel.code == retry.code == grpc.StatusCode.NOT_FOUND
    assert get.message.replace(job_id, "X") == unknown.message.replace("job_nope", "X")
    assert cancel.message == retry.message == get.message
    mine = await authed.call("GetJob", pb.GetJobRequest(job_id=job_id), alice)
    assert mine.job_id == job_id
    assert mine.state != pb.JOB_STATE_CANCELED
    listed = await authed.call("ListJobs", pb.ListJobsRequest(), bob)
    assert list(listed.jobs) == []


# What only the JSON face has


@pytest.fixture
async def json_face(gateways: GatewayFactory, gateway: GatewayApp) -> AsyncIterator[JsonFace]:
    async with face_on("json", gateways) as opened:
        assert isinstance(opened, JsonFace)
        yield opened


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"jobId": 42, "nope": 1}', b'{"unknownField": "x"}', b"\xff\xfe"],
    ids=["malformed", "array", "wrong-type", "unknown-field", "not-utf8"],
)
async def test_json_that_is_not_the_message_is_invalid_argument(
    json_face: JsonFace, body: bytes
) -> None:
    with pytest.raises(Failed) as info:
        await json_face.call_raw("GetJob", body)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message.startswith(UNDECODABLE)


async def test_a_body_not_declared_json_and_an_unknown_method_are_refused(
    json_face: JsonFace,
) -> None:
    with pytest.raises(Failed) as info:
        await json_face.call_raw("GetJob", b"job_id=x", **{"content-type": "text/plain"})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    response = await json_face.client.post(json_face.url("Nope"), json={})
    assert response.status_code == 501
    assert response.json()["status"] == "UNIMPLEMENTED"


async def test_http_statuses_follow_googles_mapping(json_face: JsonFace) -> None:
    async def status(method: str, body: object) -> tuple[int, str]:
        response = await json_face.client.post(json_face.url(method), json=body)
        return response.status_code, response.json().get("status", "OK")

    assert await status("GetJob", {"jobId": "job_nope"}) == (404, "NOT_FOUND")
    assert await status("ListJobs", {"pageToken": "%%%"}) == (400, "INVALID_ARGUMENT")
    assert await status("ListJobs", {}) == (200, "OK")


async def test_lines_about_undecodable_json_are_rate_limited(
    json_face: JsonFace, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dispatcher_gateway.rpc"):
        for _ in range(50):
            with pytest.raises(Failed):
                await json_face.call_raw("GetJob", b"{not json")
    assert len([r for r in caplog.records if "did not decode" in r.getMessage()]) == 10


async def read_sse(
    client: httpx.AsyncClient, url: str, count: int, **headers: str
) -> list[tuple[str, pb.JobEvent]]:
    """The first `count` events of a Subscribe over SSE, then the connection closed."""
    got: list[tuple[str, pb.JobEvent]] = []
    async with client.stream(
        "POST", url, content=b"{}", headers={"content-type": "application/json", **headers}
    ) as response:
        assert response.status_code == 200
        async for item in sse_events(response):
            assert item.event == "", item
            got.append((item.id, json_format.Parse(item.data, pb.JobEvent())))
            if len(got) == count:
                break
    return got


async def test_an_sse_subscriber_resumes_from_its_last_event_id_with_no_gap_and_no_repeat(
    json_face: JsonFace, face_grpc: Face
) -> None:
    url = json_face.url("Subscribe")
    for _ in range(4):
        await json_face.call("Dispatch", email_request(mode=pb.MODE_SYNC))
    first = await read_sse(json_face.client, url, 5)
    # While it is away, more happens: after its cursor, some stored, some live.
    for _ in range(3):
        await json_face.call("Dispatch", email_request(mode=pb.MODE_SYNC))
    resumed = await read_sse(json_face.client, url, 9, **{"last-event-id": first[-1][0]})
    seen = [event_id for event_id, _ in first + resumed]
    # Every event, in order, once: what a Subscribe from the start on gRPC reads.
    everything = await read_grpc(face_grpc, len(seen))
    assert seen == [e.cursor for e in everything]
    assert len(set(seen)) == len(seen) == 14
    assert all(event_id == event.cursor for event_id, event in first + resumed)


async def read_grpc(face: Face, count: int) -> list[pb.JobEvent]:
    assert isinstance(face, GrpcFace)
    events: list[pb.JobEvent] = []
    async for event in face.stub.Subscribe(pb.SubscribeRequest()):
        events.append(event)
        if len(events) == count:
            break
    return events


@pytest.fixture
async def face_grpc(gateways: GatewayFactory, gateway: GatewayApp) -> AsyncIterator[Face]:
    async with face_on("grpc", gateways) as opened:
        yield opened


async def test_a_stream_the_server_ends_names_the_cursor_to_resume_from(
    gateways: GatewayFactory,
) -> None:
    await gateways.start(max_stream_age=1.0)
    async with face_on("json", gateways) as face:
        assert isinstance(face, JsonFace)
        await face.call("Dispatch", email_request(mode=pb.MODE_SYNC))
        with pytest.raises(Failed) as info:
            await face.call("Subscribe", pb.SubscribeRequest())
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "resume with after_cursor=" in info.value.message


async def test_a_watch_ends_with_an_ok_status_after_the_terminal_event(json_face: JsonFace) -> None:
    job = (await json_face.call("Dispatch", email_request(mode=pb.MODE_SYNC))).job
    events = await json_face.call("WatchJob", pb.WatchJobRequest(job_id=job.job_id))
    assert [e.type for e in events] == ["queued", "dispatch_completed"]
    assert events[-1].terminal


async def test_a_quiet_stream_sends_heartbeats_then_its_events(
    json_face: JsonFace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_face_module, "HEARTBEAT", 0.2)
    lines: list[str] = []
    headers = {"content-type": "application/json"}
    body = b'{"liveOnly": true}'
    async with json_face.client.stream(
        "POST", json_face.url("Subscribe"), content=body, headers=headers
    ) as response:
        async for line in response.aiter_lines():
            lines.append(line)
            if lines.count(": heartbeat") == 2 and len(lines) == 4:
                # Quiet so far; now something happens, and arrives after the heartbeats.
                await json_face.call("Dispatch", email_request(mode=pb.MODE_SYNC))
            if line.startswith("data: ") and "dispatch_completed" in line:
                break
    assert lines[:4] == [": heartbeat", "", ": heartbeat", ""]
    assert any(line.startswith("id: ") for line in lines[4:])
