"""Tracing on, spans kept by the SDK's in-memory exporter: a dispatch that ends by webhook is one
trace, from the client's own span through the gateway's Dispatch span to the upstream request
(whose `traceparent` the sandbox saw), and each webhook's span links to it."""

from __future__ import annotations

import asyncio

import grpc
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.tracing import Tracing
from tests.support.loopback import GatewayFactory, RunningSandbox
from tests.support.requests import request_for

WAIT = 20.0
DISPATCH_SPAN = "/dispatcher.gateway.v1.DispatchService/Dispatch"


def hex_id(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


async def until_ended(stub: pb_grpc.DispatchServiceStub, job_id: str) -> pb.Job:
    async with asyncio.timeout(WAIT):
        while True:
            job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
                return job
            await asyncio.sleep(0.05)


async def webhook_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The webhook receiver's server spans, once `count` have ended (a span ends after its
    answer is sent, a little after the job's state changed)."""
    async with asyncio.timeout(WAIT):
        while True:
            spans = [
                s
                for s in exporter.get_finished_spans()
                if s.kind is SpanKind.SERVER and s.name.startswith("POST /webhooks/")
            ]
            if len(spans) >= count:
                return spans
            await asyncio.sleep(0.05)


async def test_a_dispatch_ended_by_webhook_is_one_trace(
    gateways: GatewayFactory, sandbox: RunningSandbox
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = await gateways.start(tracing=Tracing(provider))
    client_tracer = provider.get_tracer("a client")

    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        with client_tracer.start_as_current_span("client call", kind=SpanKind.CLIENT) as mine:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            response = await stub.Dispatch(
                request_for(pb.SERVICE_ESIGN), metadata=tuple(carrier.items()), timeout=10
            )
        job_id = response.job.job_id
        job = await until_ended(stub, job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    trace_id = mine.get_span_context().trace_id

    spans = exporter.get_finished_spans()
    (dispatch,) = [s for s in spans if s.name == DISPATCH_SPAN]
    assert dispatch.kind is SpanKind.SERVER
    assert dispatch.context.trace_id == trace_id
    assert dispatch.parent is not None
    assert dispatch.parent.span_id == mine.get_span_context().span_id

    # The outbox's request upstream, in the same trace, under the Dispatch span; the sandbox
    # received its traceparent.
    (upstream,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == "POST"]
    assert upstream.context.trace_id == trace_id
    assert upstream.parent is not None
    assert upstream.parent.span_id == dispatch.context.span_id
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        answer = await http.get("/_sandbox/requests", params={"idempotencyKey": job_id})
    (received,) = answer.json()["requests"]
    assert received["traceparent"] == (
        f"00-{hex_id(trace_id, 32)}-{hex_id(upstream.context.span_id, 16)}"
        f"-{hex_id(upstream.context.trace_flags, 2)}"
    )

    # Each webhook is a trace of its own (the upstream sends no context) linked to the job's.
    hooks = await webhook_spans(exporter, 1)
    for hook in hooks:
        assert hook.context.trace_id != trace_id
        assert [(link.context.trace_id, link.context.span_id) for link in hook.links] == [
            (trace_id, dispatch.context.span_id)
        ]

    # The callback URL's token is a secret: no span says it.
    token = gateway.gateway.caller.tokens.token(job_id)
    for span in exporter.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert token not in str(value), (span.name, value)
    provider.shutdown()


async def test_tracing_off_keeps_no_context(
    gateways: GatewayFactory, stub: pb_grpc.DispatchServiceStub
) -> None:
    """Off (the default), a client's traceparent is not kept, and nothing is sent upstream."""
    carrier: dict[str, str] = {}
    provider = TracerProvider()
    with provider.get_tracer("a client").start_as_current_span("client call"):
        TraceContextTextMapPropagator().inject(carrier)
    assert trace.get_current_span() is trace.INVALID_SPAN
    response = await stub.Dispatch(
        request_for(pb.SERVICE_EMAIL), metadata=tuple(carrier.items()), timeout=10
    )
    job = await until_ended(stub, response.job.job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    stored = await gateways.running[0].store.get_job(response.job.job_id)
    assert stored is not None
    assert stored.trace_context == ""
