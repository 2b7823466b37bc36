"""The gateway end to end on the embedded store: real gRPC, the sandbox as a real HTTP server,
webhooks over real HTTPS."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.core.model import JobEvent
from tests.support.loopback import GatewayFactory, RunningSandbox
from tests.support.metrics import sample
from tests.support.requests import email_request, request_for, status_details

STREAM_TIMEOUT = 20.0
POLL = 0.02

SERVICES = [
    pb.SERVICE_EMAIL,
    pb.SERVICE_SMS,
    pb.SERVICE_POSTAL,
    pb.SERVICE_ESIGN,
    pb.SERVICE_INVOICING,
    pb.SERVICE_FILE,
    pb.SERVICE_UPLOAD,
]
CALLED_BACK = {pb.SERVICE_ESIGN, pb.SERVICE_POSTAL}
"""Services whose jobs end by webhook (the sandbox's default providers call back)."""
TERMINAL_EVENT = {
    pb.SERVICE_ESIGN: "document_signed",
    pb.SERVICE_POSTAL: "letter_delivered",
}


async def watch(stub: pb_grpc.DispatchServiceStub, job_id: str) -> list[pb.JobEvent]:
    """Every event of the job, to its end."""

    async def collect() -> list[pb.JobEvent]:
        return [e async for e in stub.WatchJob(pb.WatchJobRequest(job_id=job_id))]

    return await asyncio.wait_for(collect(), STREAM_TIMEOUT)


async def job_events(gateway: GatewayApp, job_id: str) -> list[JobEvent]:
    """Every event the gateway stored for the job, its record of upstream requests included."""
    return await gateway.store.read_events(client="anonymous", job_id=job_id)


async def called_back(gateway: GatewayApp, job_id: str, end: str) -> list[str]:
    """The types of a called-back job's events as stored, once its 202 (`submitted`) and its
    end are: the first webhook may come before the gateway has recorded the 202."""
    async with asyncio.timeout(STREAM_TIMEOUT):
        while True:
            types = [e.type for e in await job_events(gateway, job_id)]
            if {"submitted", end} <= set(types):
                return [t for t in types if t != "upstream_attempt"]
            await asyncio.sleep(POLL)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: pb.Service.Name(s))
async def test_async_dispatch_reaches_its_end(
    stub: pb_grpc.DispatchServiceStub, gateway: GatewayApp, sandbox: RunningSandbox, service: int
) -> None:
    response = await stub.Dispatch(request_for(service, chain=()), timeout=10)
    assert response.job.state == pb.JOB_STATE_QUEUED
    events = await watch(stub, response.job.job_id)
    types = [e.type for e in events]
    if service in CALLED_BACK:
        # Sent async; its end comes by webhook.
        assert types[-1] == TERMINAL_EVENT[service]
        stored = await called_back(gateway, response.job.job_id, TERMINAL_EVENT[service])
        assert stored[0] == "queued"
        assert stored.count("submitted") == 1
    else:
        # Never called back: sent in sync mode in the background, the answer is its end.
        assert types == ["queued", "dispatch_completed"]
    assert events[-1].terminal
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED
    job = await stub.GetJob(pb.GetJobRequest(job_id=response.job.job_id), timeout=10)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert job.dispatch_id.startswith("disp_")
    [attempt] = job.attempts
    mode = pb.MODE_ASYNC if service in CALLED_BACK else pb.MODE_SYNC
    assert (attempt.mode, attempt.http_status) == (mode, 202 if mode == pb.MODE_ASYNC else 200)
    [request] = [r for r in sandbox.sandbox.requests if r.idempotency_key == job.job_id]
    assert (request.request_id, request.status) == (attempt.request_id, attempt.http_status)


async def test_async_chain_file_then_email(stub: pb_grpc.DispatchServiceStub) -> None:
    request = request_for(pb.SERVICE_FILE, chain=(pb.SERVICE_EMAIL,))
    response = await stub.Dispatch(request, timeout=10)
    assert list(response.job.chain) == [pb.SERVICE_EMAIL]
    events = await watch(stub, response.job.job_id)
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED


# A called-back job's webhooks come a while after the 202, so that the answer can only have
# come before its end (the sandbox has no way to hold them back until told).
@pytest.mark.parametrize("sandbox_options", [{"event_delay": 1.0}])
@pytest.mark.parametrize("service", SERVICES, ids=lambda s: pb.Service.Name(s))
async def test_sync_dispatch_answers_with_the_result(
    stub: pb_grpc.DispatchServiceStub, gateway: GatewayApp, service: int
) -> None:
    request = request_for(service)
    request.mode = pb.MODE_SYNC
    response = await stub.Dispatch(request, timeout=30)
    assert response.job.dispatch_id
    events = await watch(stub, response.job.job_id)
    if service in CALLED_BACK:
        # A signature request sent is not a signed document: the call answers once the upstream
        # accepted it, and the job ends by its webhook, as an async one does.
        assert response.job.state == pb.JOB_STATE_SUBMITTED
        assert events[-1].type == TERMINAL_EVENT[service]
        stored = await called_back(gateway, response.job.job_id, TERMINAL_EVENT[service])
        assert stored[0] == "queued"
        assert stored.count("submitted") == 1
    else:
        assert response.job.state == pb.JOB_STATE_SUCCEEDED
        assert response.job.result.fields
        assert [e.type for e in events] == ["queued", "dispatch_completed"]
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED


async def test_metadata_is_echoed_on_every_event(stub: pb_grpc.DispatchServiceStub) -> None:
    request = request_for(pb.SERVICE_POSTAL)
    request.metadata.update({"order": "A-42", "tenant": "acme"})
    response = await stub.Dispatch(request, timeout=10)
    events = await watch(stub, response.job.job_id)
    assert len(events) >= 4
    assert all(dict(e.metadata) == {"order": "A-42", "tenant": "acme"} for e in events)


async def test_same_idempotency_key_same_request_is_one_job(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    request = email_request(idempotency_key="order-42")
    first = await stub.Dispatch(request, timeout=10)
    again = await asyncio.gather(*(stub.Dispatch(request, timeout=10) for _ in range(5)))
    assert {r.job.job_id for r in again} == {first.job.job_id}
    await watch(stub, first.job.job_id)
    assert sandbox.sandbox.stats().dispatches == 1


async def test_same_idempotency_key_other_request_fails_precondition(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    await stub.Dispatch(email_request(idempotency_key="order-43"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Dispatch(email_request(idempotency_key="order-43", provider_name="ses"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_webhook_delivered_five_times_is_one_event(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.duplicate_deliveries = 5
    response = await stub.Dispatch(request_for(pb.SERVICE_ESIGN), timeout=10)
    events = await watch(stub, response.job.job_id)
    await sandbox.sandbox.wait_for_webhooks(STREAM_TIMEOUT)  # the other copies land too
    stats = sandbox.sandbox.stats()
    (record,) = sandbox.sandbox.dispatches
    assert stats.webhooks_delivered == 5
    assert [(w.event, w.outcomes) for w in record.webhooks] == [("document_signed", [200] * 5)]
    replay = await watch(stub, response.job.job_id)
    assert [e.type for e in replay] == [e.type for e in events]
    assert [e.type for e in replay].count("document_signed") == 1


async def test_webhook_before_the_202_is_handled(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox, gateway: GatewayApp
) -> None:
    # The sandbox accepts the dispatch and sends its webhook at once, but holds the 202 back.
    sandbox.sandbox.faults.timeout_rate = 1.0
    sandbox.sandbox.faults.timeout_delay = 1.0
    response = await stub.Dispatch(request_for(pb.SERVICE_ESIGN), timeout=10)
    job_id = response.job.job_id
    events = await watch(stub, job_id)
    assert [e.type for e in events] == ["queued", "document_signed"]
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED
    assert events[-1].dispatch_id.startswith("disp_")
    # The late 202 is recorded (its attempt, then `submitted`), and does not move the job back.
    async with asyncio.timeout(STREAM_TIMEOUT):
        while len(stored := await job_events(gateway, job_id)) < 4:
            await asyncio.sleep(POLL)
    types = [e.type for e in stored]
    assert types == ["queued", "document_signed", "upstream_attempt", "submitted"]
    assert stored[2].data["http_status"] == 202
    assert stored[3].state.value == "succeeded"
    job = await stub.GetJob(pb.GetJobRequest(job_id=response.job.job_id), timeout=10)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert sandbox.sandbox.stats().dispatches == 1


@pytest.mark.parametrize("sandbox_options", [{"event_delay": 1.0}])
async def test_restart_between_dispatch_and_webhook_delivers_to_a_resuming_subscriber(
    gateways: GatewayFactory, sandbox: RunningSandbox
) -> None:
    first = await gateways.start()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        stream = stub.Subscribe(pb.SubscribeRequest())
        response = await stub.Dispatch(request_for(pb.SERVICE_ESIGN), timeout=10)
        job_id = response.job.job_id
        seen: list[pb.JobEvent] = []
        async for event in stream:
            seen.append(event)
            if event.type == "submitted":
                break
        stream.cancel()
    # The gateway goes away before the webhook lands: the sandbox's delivery fails and is retried.
    await gateways.stop(first)
    await gateways.start()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        resumed: list[pb.JobEvent] = []

        async def rest() -> None:
            async for event in stub.Subscribe(pb.SubscribeRequest(after_cursor=seen[-1].cursor)):
                resumed.append(event)
                if event.terminal:
                    return

        await asyncio.wait_for(rest(), STREAM_TIMEOUT)
    assert [e.job_id for e in resumed] == [job_id] * len(resumed)
    assert resumed[-1].type == "document_signed"
    cursors = [int(e.cursor) for e in seen + resumed]
    assert cursors == sorted(set(cursors))


async def test_unknown_job_is_not_found(stub: pb_grpc.DispatchServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetJob(pb.GetJobRequest(job_id="job_nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_request_lists_field_violations(stub: pb_grpc.DispatchServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Dispatch(pb.DispatchRequest(service=pb.SERVICE_EMAIL), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = status_details(info.value)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    fields = {v.field for v in bad_request.field_violations}
    assert {"template.id", "email"} <= fields


async def test_list_jobs_pages_newest_first(stub: pb_grpc.DispatchServiceStub) -> None:
    ids = [(await stub.Dispatch(email_request(), timeout=10)).job.job_id for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token), timeout=10)
        seen.extend(j.job_id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))


async def test_a_page_of_large_jobs_stays_under_a_clients_default_receive_limit(
    stub: pb_grpc.DispatchServiceStub,
) -> None:
    """Twenty jobs with the most metadata a job may carry (64 entries of 512 four-byte
    characters each way, about 260 kB): a default client (4 MiB receive limit) lists them all,
    over pages that each fit, none twice."""
    metadata = {f"{i:02d}" + "\U0001f4e8" * 510: "\U0001f4e8" * 512 for i in range(64)}
    ids = [
        (await stub.Dispatch(email_request(metadata=metadata), timeout=10)).job.job_id
        for _ in range(20)
    ]
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await stub.ListJobs(pb.ListJobsRequest(page_token=token), timeout=10)
        assert page.ByteSize() < 4 << 20
        pages.append([j.job_id for j in page.jobs])
        token = page.next_page_token
        if not token:
            break
    assert [job_id for page_ids in pages for job_id in page_ids] == list(reversed(ids))
    assert len(pages) == 2


async def test_list_templates(stub: pb_grpc.DispatchServiceStub) -> None:
    answer = await stub.ListTemplates(pb.ListTemplatesRequest(), timeout=10)
    assert 1 in {t.id for t in answer.templates}


async def test_validate_good_and_bad(stub: pb_grpc.DispatchServiceStub) -> None:
    good = await stub.Validate(email_request(), timeout=10)
    assert good.valid
    bad = await stub.Validate(email_request(provider_name="pigeon"), timeout=10)
    assert not bad.valid
    assert bad.error.http_status == 400


async def test_health_and_reflection(gateways: GatewayFactory) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    await gateways.start(grpc_reflection=True)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(
            health_pb2.HealthCheckRequest(service="dispatcher.gateway.v1.DispatchService")
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in reflection.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            assert "dispatcher.gateway.v1.DispatchService" in names
            break


async def test_admin_probes_and_metrics(
    stub: pb_grpc.DispatchServiceStub, gateway: GatewayApp, sandbox: RunningSandbox
) -> None:
    import httpx

    assert gateway.listeners is not None
    async with httpx.AsyncClient(base_url=gateway.listeners.admin.url) as admin:
        before = (await admin.get("/metrics")).text
        response = await stub.Dispatch(request_for(pb.SERVICE_ESIGN), timeout=10)
        events = await watch(stub, response.job.job_id)
        # Counted before the webhook is answered 200.
        await sandbox.sandbox.wait_for_webhooks(STREAM_TIMEOUT)
        assert (await admin.get("/healthz")).status_code == 200
        ready = await admin.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["upstream_circuit"]["state"] == "closed"
        after = (await admin.get("/metrics")).text

    # The counters are the process's (earlier tests counted too): this test's share is the change.
    def change(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert change("dispatcher_gateway_dispatches_total", service="esign", mode="async") == 1
    assert [e.type for e in events][-1] == "document_signed"
    assert change("dispatcher_gateway_webhooks_total", outcome="recorded") == 1
    assert sample(after, "dispatcher_gateway_streams") == 0


async def test_a_client_that_goes_away_leaves_no_stream_behind(
    stub: pb_grpc.DispatchServiceStub, gateway: GatewayApp
) -> None:
    await stub.Dispatch(email_request(), timeout=10)
    streams = [stub.Subscribe(pb.SubscribeRequest()) for _ in range(20)]
    for stream in streams:
        await asyncio.wait_for(stream.read(), STREAM_TIMEOUT)
    assert gateway.hub.streams == 20
    tasks_before = len(asyncio.all_tasks())
    for stream in streams:
        stream.cancel()
    async with asyncio.timeout(5):
        while gateway.hub.streams or gateway.calls.in_flight:
            await asyncio.sleep(0.02)
    assert len(asyncio.all_tasks()) <= tasks_before
