"""Tracing: the OpenTelemetry SDK and its official instrumentations, configured by the standard
OTEL_* variables and off unless OTEL_TRACES_EXPORTER names an exporter.

A dispatch is one trace: the gRPC server span of the client's call (continuing the client's
own trace when its metadata carries a W3C `traceparent`), the upstream request made for the job
(the outbox's, perhaps minutes later or on another replica: the job keeps the call's
`traceparent`, core/model.py's `Job.trace_context`), and the span of each webhook that reports
on the job, which starts a trace of its own (the upstream sends no trace context) and links to
the job's. Core never sees a span: it keeps the context as an opaque string, and the edges do
the spans (rpc/, upstream/, webhooks/ through the JobTraces port).

Off, nothing is instrumented and nothing exported: the functions below then work on the API's
no-op defaults, and a job keeps an empty context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final

import grpc
import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette

log = logging.getLogger("dispatcher_gateway.tracing")

DEFAULT_SERVICE_NAME: Final = "dispatcher-gateway"
"""The service name when OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) says
none."""
TRACEPARENT: Final = "traceparent"
REDACTED_PATH: Final = "/webhooks/dispatcher/{token}"
"""What a webhook span says of its URL: the path holds the job's callback token, a secret."""
_URL_ATTRIBUTES: Final = ("http.target", "http.url", "url.path", "url.full")
"""Where the instrumentation puts the path, under the old and the stable conventions."""

_W3C = TraceContextTextMapPropagator()


class ConfigError(ValueError):
    """An OTEL_* variable this gateway cannot act on."""


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        # Reads OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _TIMEOUT, _CERTIFICATE (and the
        # _TRACES_ variants) itself.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")


class Tracing:
    """The gateway's tracer provider (None: tracing is off) and what instruments the edges."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Tracing:
        """Off unless OTEL_TRACES_EXPORTER names exporters (otlp, console; comma-separated), and
        off whenever OTEL_SDK_DISABLED is true. The SDK reads the rest of OTEL_* itself: the
        resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), the sampler
        (OTEL_TRACES_SAMPLER, _ARG), the batching (OTEL_BSP_*), the exporter's endpoint."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        names = [
            n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()
        ]
        names = [n for n in names if n != "none"]
        if not names:
            return cls()
        exporters = [_exporter(n) for n in names]
        resource = Resource.create()
        if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        ):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing on: spans exported to %s", ", ".join(names))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def grpc_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The gRPC server's span for each call (outermost, so that refused calls have one)."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        # The instrumentation's own function is not typed.
        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider
        )
        return [interceptor]

    def instrument_client(self, client: httpx.AsyncClient) -> None:
        """A span for each upstream request, its `traceparent` sent upstream."""
        if self.provider is None:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=self.provider)

    def instrument_webhooks(self, app: Starlette) -> None:
        """A span for each webhook received, its URL's callback token left out."""
        if self.provider is None:
            return
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor

        StarletteInstrumentor.instrument_app(
            app, tracer_provider=self.provider, server_request_hook=_redact_url
        )

    def shutdown(self) -> None:
        """Export what is left."""
        if self.provider is not None:
            self.provider.shutdown()


def _redact_url(span: trace.Span, scope: dict[str, Any]) -> None:
    if span.is_recording():
        for name in _URL_ATTRIBUTES:
            span.set_attribute(name, REDACTED_PATH)


def current_traceparent() -> str:
    """The W3C traceparent of the current span ('' when there is none, as with tracing off)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT, "")


@contextlib.contextmanager
def continued(traceparent: str) -> Iterator[None]:
    """Within: the spans started continue the trace `traceparent` names (none: no change)."""
    if not traceparent:
        yield
        return
    token = otel_context.attach(_W3C.extract({TRACEPARENT: traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)


class SpanLinks:
    """core.ports.JobTraces: the current span (a webhook's) links to the job's trace."""

    def concerns(self, trace_context: str) -> None:
        if not trace_context:
            return
        span = trace.get_current_span()
        if not span.is_recording():
            return
        linked = trace.get_current_span(_W3C.extract({TRACEPARENT: trace_context}))
        if linked.get_span_context().is_valid:
            span.add_link(linked.get_span_context())


def current_trace_id() -> str:
    """The current trace's id as 32 hex digits, '' when none (for log lines)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
