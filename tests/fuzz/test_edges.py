"""Fuzzing the gateway's edges with Hypothesis, against a real gateway process.

Each edge gets a gateway of its own and a share of the time budget (tests/fuzz/budget.py). The
property, for every input: no HTTP 5xx but 503, no gRPC INTERNAL or UNKNOWN, no status message
that echoes a large input, every answer survives protobuf's binary and JSON forms. And after the
fuzzing: the process is healthy (/healthz, gRPC health), every job lists and reads, and a
Subscribe from the start reads every stored event, as stored, to the last one.

`make fuzz` runs this module for 10 minutes; the figures print at the end of the run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
import httpx
from hypothesis import strategies as st

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.loopback import WEBHOOK_SECRET
from tests.support.requests import request_for

from .budget import LONG_MAX_EXAMPLES, Budget, EdgeReport, fuzz
from .strategies import (
    FRESH,
    Sent,
    WebhookInput,
    dispatch_requests,
    get_job_requests,
    list_jobs_requests,
    subscribe_requests,
    webhook_inputs,
)
from .target import (
    CALL_TIMEOUT,
    FORBIDDEN,
    MAX_STATUS_MESSAGE,
    FuzzTarget,
    Known,
    roundtrip,
    stored_events,
)

T = TypeVar("T")

BUDGET = Budget.from_env()
WRONG_SECRET = "not-the-webhook-secret-0123456789"
SUBSCRIBE_WINDOW = 0.2
"""Seconds a fuzzed Subscribe is read for (it never ends by itself)."""
SUBSCRIBE_READ = 5
"""Events read from a fuzzed Subscribe before it is cancelled."""
SEED = [
    request_for(pb.SERVICE_EMAIL, chain=()),
    request_for(pb.SERVICE_SMS),
    request_for(pb.SERVICE_ESIGN),
    request_for(pb.SERVICE_POSTAL),
    request_for(pb.SERVICE_FILE, chain=(pb.SERVICE_EMAIL,)),
]
"""Jobs to aim at: some end by the upstream's answer, some wait for the sandbox's webhooks."""


@dataclass(frozen=True)
class Edge:
    name: str
    weight: float
    """Its share of the time budget."""
    max_examples: int
    """Its cap in the short profile."""

    @property
    def seconds(self) -> float:
        return BUDGET.share(self.weight)

    @property
    def cap(self) -> int:
        return LONG_MAX_EXAMPLES if BUDGET.long else self.max_examples


WEBHOOK = Edge("webhook", 0.35, 2000)
DISPATCH = Edge("Dispatch", 0.2, 1200)
SUBSCRIBE = Edge("Subscribe", 0.2, 150)
GET_JOB = Edge("GetJob", 0.1, 1500)
LIST_JOBS = Edge("ListJobs", 0.15, 1500)


async def run(target: FuzzTarget, edge: Edge, inputs: Any, check: Any) -> EdgeReport:
    report = await asyncio.to_thread(
        fuzz, edge.name, inputs, check, seconds=edge.seconds, max_examples=edge.cap
    )
    await after_fuzzing(target, report)
    return report


async def after_fuzzing(target: FuzzTarget, report: EdgeReport) -> None:
    """The process is healthy, every job reads, every stored event reaches a subscriber."""
    await asyncio.to_thread(target.check_healthy)
    report.jobs_read = await asyncio.to_thread(target.check_jobs_readable)
    stored = await stored_events(target.store_path)
    report.events_read = await asyncio.to_thread(target.check_deliverable, stored)


def answered(report: EdgeReport, call: Callable[[], T]) -> T | None:
    """The call's answer, or None when it was refused with a status the property allows."""
    try:
        answer = call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        report.outcomes[code.name] += 1
        assert code not in FORBIDDEN, f"{code.name}: {details}"
        assert len(details) <= MAX_STATUS_MESSAGE, f"{code.name}: {len(details)} characters"
        return None
    report.outcomes["OK"] += 1
    return answer


# Webhooks


def _mac(secret: str, content: bytes) -> bytes:
    return hmac.new(secret.encode(), content, hashlib.sha256).digest()


def webhook_headers(webhook: WebhookInput, now: int) -> list[tuple[str, bytes]]:
    """The headers `webhook` is sent with, signed now (docs/upstream.md "Signature")."""
    signing = webhook.signing
    secrets = [WEBHOOK_SECRET if s == "right" else WRONG_SECRET for s in signing.secrets]
    signed = webhook.body + b" " if signing.tamper else webhook.body
    stamp = (
        signing.odd_timestamp if signing.odd_timestamp is not None else str(now + signing.offset)
    )
    stamp = stamp.strip()
    headers: list[tuple[str, bytes]] = []
    if webhook.content_type is not None:
        headers.append(("content-type", webhook.content_type.strip().encode("latin-1")))
    webhook_id = signing.webhook_id.strip() if signing.webhook_id else ""
    if signing.scheme in ("dispatcher", "untimed"):
        content = signed if signing.scheme == "untimed" else stamp.encode() + b"." + signed
        signatures = " ".join("sha256=" + _mac(s, content).hex() for s in secrets)
        headers.append(("X-Webhook-Signature", signatures.encode()))
        if signing.scheme == "dispatcher":
            headers.append(("X-Webhook-Timestamp", stamp.encode()))
        if webhook_id:
            headers.append(("X-Webhook-Id", webhook_id.encode("latin-1")))
    elif signing.scheme == "standard":
        webhook_id = webhook_id or "wh_fuzz"
        content = f"{webhook_id}.{stamp}.".encode() + signed
        signatures = " ".join("v1," + base64.b64encode(_mac(s, content)).decode() for s in secrets)
        headers += [
            ("webhook-id", webhook_id.encode("latin-1")),
            ("webhook-timestamp", stamp.encode()),
            ("webhook-signature", signatures.encode()),
        ]
    elif signing.scheme == "garbage":
        headers += [
            ("X-Webhook-Signature", signing.garbage.strip()),
            ("X-Webhook-Timestamp", str(now).encode()),
        ]
    return headers + webhook.extra_headers


def replayed(webhook: WebhookInput, headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A captured webhook sent again: as it was, under a new id, or without one."""
    if webhook.replay == "same":
        return headers
    ids = ("x-webhook-id", "webhook-id")
    kept = [(k, v) for k, v in headers if k.lower() not in ids]
    if webhook.replay == "new-id":
        name = "webhook-id" if webhook.signing.scheme == "standard" else "X-Webhook-Id"
        kept.append((name, f"wh_replay_{time.monotonic_ns()}".encode()))
    return kept


class WebhookEdge:
    def __init__(self, target: FuzzTarget, known: Known) -> None:
        self.target = target
        self.known = known
        self.opened = contextlib.ExitStack()
        self.client: httpx.Client | None = None
        self.stub: pb_grpc.DispatchServiceStub | None = None

    def __call__(self, webhook: WebhookInput, report: EdgeReport) -> None:
        if self.client is None:
            # Opened in the fuzzer's thread, which uses them.
            self.client = self.opened.enter_context(self.target.https())
            self.stub = self.opened.enter_context(self.target.stub())
        token = webhook.token
        if token == FRESH:
            # The known jobs are soon finished, and a finished job takes no more terminal
            # events: what a first one does to a job is tried on a new job.
            assert self.stub is not None
            job = self.stub.Dispatch(request_for(pb.SERVICE_ESIGN), timeout=CALL_TIMEOUT).job
            segment = self.target.token(job.job_id)
        elif isinstance(token, int):
            segment = self.known.tokens[token]
        else:
            segment = quote(token, safe="")
        url = self.target.webhook_base + segment
        headers = webhook_headers(webhook, int(time.time()))
        answer = self.post(report, url, webhook.body, headers)
        if answer.status_code != 200 or answer.json() != {"status": "recorded"}:
            return
        if webhook.replay is None:
            return
        again = self.post(report, url, webhook.body, replayed(webhook, headers))
        if webhook.signing.scheme == "standard" and webhook.replay != "same":
            # The Standard Webhooks scheme signs its id: another id is another signature.
            assert again.status_code == 401, again.text
        else:
            assert (again.status_code, again.json()) == (200, {"status": "duplicate"})

    def post(
        self, report: EdgeReport, url: str, body: bytes, headers: list[tuple[str, bytes]]
    ) -> httpx.Response:
        assert self.client is not None
        answer = self.client.post(url, content=body, headers=headers)
        report.outcomes[str(answer.status_code)] += 1
        assert answer.status_code < 500 or answer.status_code == 503, answer.text[:200]
        if answer.status_code == 200:
            assert answer.json()["status"] in ("recorded", "duplicate")
        return answer

    def close(self) -> None:
        self.opened.close()


async def test_webhooks(fuzz_target: FuzzTarget) -> None:
    known = await asyncio.to_thread(fuzz_target.seed, SEED)
    edge = WebhookEdge(fuzz_target, known)
    try:
        inputs = webhook_inputs(len(known.tokens), known.dispatch_ids)
        report = await run(fuzz_target, WEBHOOK, inputs, edge)
    finally:
        edge.close()
    assert report.failures == 0


# gRPC


class GrpcEdge:
    """Calls one method of DispatchService on a channel opened in the fuzzer's thread."""

    def __init__(self, target: FuzzTarget, call: Callable[[Any, Any, EdgeReport], None]) -> None:
        self.target = target
        self.call = call
        self.opened = contextlib.ExitStack()
        self.stub: pb_grpc.DispatchServiceStub | None = None

    def __call__(self, request: Any, report: EdgeReport) -> None:
        if self.stub is None:
            self.stub = self.opened.enter_context(self.target.stub())
        self.call(self.stub, request, report)

    def close(self) -> None:
        self.opened.close()


async def fuzz_grpc(
    target: FuzzTarget,
    edge: Edge,
    inputs: st.SearchStrategy[Any],
    call: Callable[[Any, Any, EdgeReport], None],
) -> None:
    caller = GrpcEdge(target, call)
    try:
        report = await run(target, edge, inputs, caller)
    finally:
        caller.close()
    assert report.failures == 0


def dispatch(
    stub: pb_grpc.DispatchServiceStub, sent: Sent[pb.DispatchRequest], report: EdgeReport
) -> None:
    request = sent.message
    response = answered(report, lambda: stub.Dispatch(request, timeout=CALL_TIMEOUT))
    if response is not None:
        roundtrip(response)


async def test_dispatch(fuzz_target: FuzzTarget) -> None:
    await asyncio.to_thread(fuzz_target.seed, SEED)
    await fuzz_grpc(fuzz_target, DISPATCH, dispatch_requests(), dispatch)


def subscribe(
    stub: pb_grpc.DispatchServiceStub, sent: Sent[pb.SubscribeRequest], report: EdgeReport
) -> None:
    request = sent.message
    stream = stub.Subscribe(request, timeout=SUBSCRIBE_WINDOW)
    read: list[pb.JobEvent] = []

    def read_some() -> None:
        try:
            for event in stream:
                read.append(event)
                if len(read) == SUBSCRIBE_READ:
                    stream.cancel()
                    return
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise

    answered(report, read_some)
    # Read only when the stream was answered: then the cursor was one (a decimal sequence).
    after = int(request.after_cursor) if read and request.after_cursor else 0
    for event in read:
        roundtrip(event)
        assert int(event.cursor) > after
        assert not request.job_ids or event.job_id in request.job_ids
        assert not request.services or event.service in request.services
        assert all(event.metadata.get(k) == v for k, v in request.metadata.items())
    cursors = [int(e.cursor) for e in read]
    assert cursors == sorted(set(cursors))


async def test_subscribe(fuzz_target: FuzzTarget) -> None:
    known = await asyncio.to_thread(fuzz_target.seed, SEED)
    inputs = subscribe_requests(known.job_ids, known.cursors)
    await fuzz_grpc(fuzz_target, SUBSCRIBE, inputs, subscribe)


async def test_get_job(fuzz_target: FuzzTarget) -> None:
    known = await asyncio.to_thread(fuzz_target.seed, SEED)

    def get_job(
        stub: pb_grpc.DispatchServiceStub, sent: Sent[pb.GetJobRequest], report: EdgeReport
    ) -> None:
        request = sent.message
        job_id = request.job_id
        job = answered(report, lambda: stub.GetJob(request, timeout=CALL_TIMEOUT))
        assert job is not None or job_id not in known.job_ids
        if job is not None:
            roundtrip(job)
            assert job.job_id == job_id

    await fuzz_grpc(fuzz_target, GET_JOB, get_job_requests(known.job_ids), get_job)


def list_jobs(
    stub: pb_grpc.DispatchServiceStub, sent: Sent[pb.ListJobsRequest], report: EdgeReport
) -> None:
    request = sent.message
    page = answered(report, lambda: stub.ListJobs(request, timeout=CALL_TIMEOUT))
    if page is not None:
        roundtrip(page)


async def test_list_jobs(fuzz_target: FuzzTarget) -> None:
    known = await asyncio.to_thread(fuzz_target.seed, SEED)
    await fuzz_grpc(fuzz_target, LIST_JOBS, list_jobs_requests(known.page_tokens), list_jobs)
