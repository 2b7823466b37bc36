"""/metrics as Prometheus reads it, after a dispatch, its webhooks, a stream and a refused
webhook: every metric the README documents is there, with its type and labels, and nothing the
gateway exports is undocumented."""

from __future__ import annotations

import asyncio
import ssl

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.metrics import documented_metrics
from tests.support.requests import request_for

STREAM_TIMEOUT = 20.0
WEBHOOKS_LATER = pytest.mark.parametrize("sandbox_options", [{"event_delay": 0.3}])
"""The sandbox's webhooks come a moment after its 202: the stream open before the dispatch is
live by then, and gets their events from the hub (measured), not from the store."""
OURS = ("dispatcher_gateway_", "grpc_server_")


async def scrape(gateway: GatewayApp) -> dict[str, tuple[str, list[Sample]]]:
    """The admin port's /metrics over HTTP, parsed: family name -> (type, samples)."""
    assert gateway.listeners is not None
    async with httpx.AsyncClient(base_url=gateway.listeners.admin.url) as admin:
        response = await admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        family.name: (family.type, family.samples)
        for family in text_string_to_metric_families(response.text)
    }


async def exercise(
    stub: pb_grpc.DispatchServiceStub, gateway: GatewayApp, sandbox: RunningSandbox, tls: TlsFiles
) -> str:
    """A dispatch followed to its end on a stream that was live before it (so its webhooks'
    events are delivered live), the finished job watched, and a webhook with a bad signature;
    the job's id."""
    subscription = stub.Subscribe(pb.SubscribeRequest())
    async with asyncio.timeout(STREAM_TIMEOUT):
        while gateway.hub.streams < 1:
            await asyncio.sleep(0.01)
        job_id = (await stub.Dispatch(request_for(pb.SERVICE_ESIGN), timeout=10)).job.job_id
        while not (await subscription.read()).terminal:
            pass
    subscription.cancel()

    async def watch() -> list[pb.JobEvent]:
        return [e async for e in stub.WatchJob(pb.WatchJobRequest(job_id=job_id))]

    events = await asyncio.wait_for(watch(), STREAM_TIMEOUT)
    assert events[-1].terminal
    await sandbox.sandbox.wait_for_webhooks(STREAM_TIMEOUT)
    assert gateway.listeners is not None
    verify = ssl.create_default_context(cafile=tls.ca)
    async with httpx.AsyncClient(base_url=gateway.listeners.webhook.url, verify=verify) as http:
        forged = await http.post(
            "/webhooks/dispatcher/forged",
            content=b'{"event": "document_signed"}',
            headers={"content-type": "application/json", "x-webhook-signature": "sha256=00"},
        )
    assert forged.status_code == 401
    return job_id


@WEBHOOKS_LATER
async def test_every_documented_metric_is_exposed_with_its_type_and_labels(
    stub: pb_grpc.DispatchServiceStub,
    gateway: GatewayApp,
    sandbox: RunningSandbox,
    tls: TlsFiles,
) -> None:
    await exercise(stub, gateway, sandbox, tls)
    page = await scrape(gateway)
    documented = documented_metrics()
    for metric in documented.values():
        assert metric.family in page, f"{metric.name} is documented and not exposed"
        kind, samples = page[metric.family]
        assert kind == metric.type, f"{metric.name}: {kind}, documented as {metric.type}"
        assert samples, f"{metric.name}: no series"
        for sample in samples:
            assert sample.name in metric.series, f"{metric.name}: {sample.name}"
            labels = set(sample.labels) - ({"le"} if metric.type == "histogram" else set())
            assert labels == metric.labels, f"{metric.name}: labels {sorted(labels)}"
    families = {m.family for m in documented.values()}
    undocumented = [name for name in page if name.startswith(OURS) and name not in families]
    assert not undocumented, f"exposed and not in the README's table: {undocumented}"


@WEBHOOKS_LATER
async def test_the_metrics_count_what_happened(
    stub: pb_grpc.DispatchServiceStub,
    gateway: GatewayApp,
    sandbox: RunningSandbox,
    tls: TlsFiles,
) -> None:
    registry = gateway.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    await exercise(stub, gateway, sandbox, tls)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetJob(pb.GetJobRequest(job_id="job_none"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    dispatch = {
        "grpc_type": "unary",
        "grpc_service": "dispatcher.gateway.v1.DispatchService",
        "grpc_method": "Dispatch",
    }
    watch = dispatch | {"grpc_type": "server_stream", "grpc_method": "WatchJob"}
    # The stream's status is counted once the handler has returned, a moment after the client
    # read it.
    async with asyncio.timeout(STREAM_TIMEOUT):
        while value("grpc_server_handled_total", **watch, grpc_code="OK") < 1:
            await asyncio.sleep(0.02)
    assert value("grpc_server_started_total", **dispatch) == 1
    assert value("grpc_server_handled_total", **dispatch, grpc_code="OK") == 1
    assert value("grpc_server_handling_seconds_count", **dispatch) == 1
    get_job = dispatch | {"grpc_method": "GetJob"}
    assert value("grpc_server_handled_total", **get_job, grpc_code="NOT_FOUND") == 1
    assert value("grpc_server_msg_sent_total", **watch) >= 2
    subscribe = watch | {"grpc_method": "Subscribe"}
    assert value("grpc_server_started_total", **subscribe) == 1
    assert value("dispatcher_gateway_dispatches_total", service="esign", mode="async") == 1
    esign = {"endpoint": "POST /api/esign", "mode": "async"}
    assert value("dispatcher_gateway_upstream_requests_total", **esign, status="202") == 1
    assert value("dispatcher_gateway_upstream_request_duration_seconds_count", **esign) == 1
    # Once, or twice should a stalled loop have let its slot go stale (core/outbox.py).
    assert value("dispatcher_gateway_upstream_rate_wait_seconds_count") >= 1
    assert value("dispatcher_gateway_jobs_ended_total", service="esign", state="succeeded") == 1
    recorded = value("dispatcher_gateway_webhooks_total", outcome="recorded")
    assert recorded >= 1
    assert value("dispatcher_gateway_webhook_requests_total", outcome="recorded") == recorded
    assert value("dispatcher_gateway_webhook_requests_total", outcome="unauthorized") == 1
    assert value("dispatcher_gateway_webhook_duration_seconds_count", outcome="unauthorized") == 1
    assert value("dispatcher_gateway_event_delivery_seconds_count", source="webhook") >= 1
    async with asyncio.timeout(STREAM_TIMEOUT):
        while value("dispatcher_gateway_streams") > 0:  # the cancelled Subscribe's end
            await asyncio.sleep(0.02)
    assert value("dispatcher_gateway_store_up") == 1
    assert value("dispatcher_gateway_upstream_circuit_state", state="closed") == 1
    assert value("dispatcher_gateway_outbox_pending_jobs") == 0
