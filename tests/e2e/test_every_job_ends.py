"""Every job ends, against the sandbox as Dispatcher is documented: webhooks for esign (Universign,
Signaturit) and postal (MySendingBox) only. The other services' jobs end by the upstream's sync
answer, sent in the background; a job whose webhook never comes ends `callback_overdue`."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core.callbacks import CallbackRules
from dispatcher_gateway.core.model import Service
from tests.support.clients import job_events_until
from tests.support.loopback import GatewayFactory, RunningSandbox
from tests.support.requests import request_for

STREAM_TIMEOUT = 20.0

JOBS: list[tuple[str, int, tuple[int, ...], str]] = [
    # (name, service, chain, provider)
    ("email", pb.SERVICE_EMAIL, (), ""),
    ("sms", pb.SERVICE_SMS, (), ""),
    ("postal", pb.SERVICE_POSTAL, (), ""),
    ("esign", pb.SERVICE_ESIGN, (), ""),
    ("esign/universign", pb.SERVICE_ESIGN, (), "universign"),
    ("invoicing", pb.SERVICE_INVOICING, (), ""),
    ("file", pb.SERVICE_FILE, (), ""),
    ("upload", pb.SERVICE_UPLOAD, (), ""),
    ("file/email", pb.SERVICE_FILE, (pb.SERVICE_EMAIL,), ""),
    ("file/esign", pb.SERVICE_FILE, (pb.SERVICE_ESIGN,), ""),
    ("postal/lob", pb.SERVICE_POSTAL, (), "lob"),
]
ENDS_BY_WEBHOOK = {
    "postal": "letter_delivered",
    "esign": "document_signed",
    "esign/universign": "transaction_completed",
    "file/esign": "document_signed",
}
"""The rest end by their sync answer, `dispatch_completed` (lob sends no webhooks)."""


@pytest.mark.parametrize("sandbox_options", [{"event_delay": 0.2}])
async def test_every_service_and_chain_ends_once_by_the_way_its_upstream_can_end_it(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    events: list[pb.JobEvent] = []
    stream = stub.Subscribe(pb.SubscribeRequest())
    names: dict[str, str] = {}
    for name, service, chain, provider in JOBS:
        request = request_for(service, chain=chain)
        request.provider_name = provider
        request.idempotency_key = f"every-{name}"
        job = (await stub.Dispatch(request, timeout=10)).job
        names[job.job_id] = name

    async def until_all_ended() -> None:
        async for event in stream:
            events.append(event)
            ended = {e.job_id for e in events if e.terminal}
            if ended == set(names):
                return

    await asyncio.wait_for(until_all_ended(), STREAM_TIMEOUT)
    await asyncio.sleep(1.0)  # anything late (a second end, a duplicate) lands now
    stream.cancel()

    terminal = collections.Counter(names[e.job_id] for e in events if e.terminal)
    assert terminal == dict.fromkeys(names.values(), 1)
    ends = {names[e.job_id]: e for e in events if e.terminal}
    for name, event in ends.items():
        assert event.state == pb.JOB_STATE_SUCCEEDED, name
        assert event.type == ENDS_BY_WEBHOOK.get(name, "dispatch_completed"), name
    # The upstream saw each job once, by its idempotency key (the job id), in the mode its
    # end needs: async with the callback URL, or sync.
    processed = collections.Counter(d.idempotency_key for d in sandbox.sandbox.dispatches)
    assert processed == dict.fromkeys(names, 1)
    modes = {names[d.idempotency_key]: d.mode for d in sandbox.sandbox.dispatches}
    assert modes == {n: "async" if n in ENDS_BY_WEBHOOK else "sync" for n in names.values()}


async def test_get_job_shows_each_attempt_of_a_retried_job_with_the_upstreams_request_ids(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.update({"refuse_next": [503, 429], "retry_after": 0.0})
    response = await stub.Dispatch(request_for(pb.SERVICE_SMS), timeout=10)
    job_id = response.job.job_id
    async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=STREAM_TIMEOUT):
        last = event
    assert last.type == "dispatch_completed"

    job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)

    assert [(a.http_status, a.error_code) for a in job.attempts] == [
        (503, "service_unavailable"),
        (429, "rate_limited"),
        (200, ""),
    ]
    assert {a.mode for a in job.attempts} == {pb.MODE_SYNC}
    assert {a.endpoint for a in job.attempts} == {"POST /api/sms"}
    sent = [r for r in sandbox.sandbox.requests if r.idempotency_key == job_id]
    assert [a.request_id for a in job.attempts] == [r.request_id for r in sent]
    assert [a.http_status for a in job.attempts] == [r.status for r in sent]
    times = [a.attempt_time.ToNanoseconds() for a in job.attempts]
    assert times == sorted(times)
    # Streams carry what happens to the job, not the record of each request.
    listed = await stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    assert [len(j.attempts) for j in listed.jobs] == [0]


# The callback deadline


# Dispatcher calls back only after the job's deadline has passed.
@pytest.mark.parametrize("sandbox_options", [{"event_delay": 2.0}])
async def test_a_job_whose_webhook_comes_too_late_ends_overdue_and_the_late_end_is_streamed(
    gateways: GatewayFactory, sandbox: RunningSandbox
) -> None:
    gateway = await gateways.start(callbacks=CallbackRules(deadlines={Service.POSTAL: 0.5}))
    registry = gateway.metrics.registry
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        job_id = (await stub.Dispatch(request_for(pb.SERVICE_POSTAL), timeout=10)).job.job_id
        events = await job_events_until(stub, job_id, "letter_delivered", STREAM_TIMEOUT)
        job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)

    assert [(e.type, e.terminal) for e in events] == [
        ("queued", False),
        ("submitted", False),
        ("failed", True),
        ("letter_created", False),
        ("letter_in_transit", False),
        ("letter_delivered", False),
    ]
    assert events[2].data["code"] == "callback_overdue"
    assert job.state == pb.JOB_STATE_FAILED
    assert job.error.code == "callback_overdue"
    # The gateway's own registry: only this test's jobs are counted in it.
    assert (
        registry.get_sample_value(
            "dispatcher_gateway_callbacks_overdue_total", {"service": "postal"}
        )
        == 1
    )
    ended = {"service": "postal", "state": "callback_overdue"}
    assert registry.get_sample_value("dispatcher_gateway_jobs_ended_total", ended) == 1
