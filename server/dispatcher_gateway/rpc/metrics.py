"""gRPC server metrics, named and labelled as go-grpc-prometheus names them, so that the
dashboards and alerts written for any gRPC server read this one: calls started, calls handled by
status code, and their latency, by type, service and method.

Outermost of the server's interceptors, it sees the status every other one (CallGuard) and the
handler settled on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

Context = grpc.aio.ServicerContext[Any, Any]
# Generic only in the type stubs: strings, not evaluated at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"

HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
"""Seconds (go-grpc-prometheus's defaults, widened to a sync Dispatch's 120 s). A stream's
handling time is its whole life."""
LABELS = ("grpc_type", "grpc_service", "grpc_method")

_KINDS: tuple[tuple[str, str, Callable[..., Handler]], ...] = (
    ("unary_unary", "unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", "server_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", "client_stream", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", "bidi_stream", grpc.stream_stream_rpc_method_handler),
)


def _code_name(context: Context, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return grpc.StatusCode.OK.name if exc is None else grpc.StatusCode.UNKNOWN.name


class ServerMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*LABELS, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Seconds from an RPC's start to its status, on the server.",
            LABELS,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Stream messages sent by the server.",
            LABELS,
            registry=registry,
        )
        self._measured: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        measured = self._measured.get(method)
        if measured is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            # Only methods that exist are kept: a caller cannot grow this by inventing names.
            measured = self._measured[method] = self._measure(method, handler)
        return measured

    def _measure(self, method: str, handler: Handler) -> Handler:
        service, _, name = method.lstrip("/").partition("/")
        for kind, grpc_type, make in _KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is None:
                continue
            labels = (grpc_type, service, name)
            wrapped: Callable[[Any, Context], Any]
            if inspect.isasyncgenfunction(behaviour):
                wrapped = self._stream(labels, behaviour)
            elif inspect.iscoroutinefunction(behaviour):
                # A unary answer, or a stream written with context.write (health's Watch).
                wrapped = self._unary(labels, behaviour)
            else:  # synchronous handlers: this server registers none
                return handler
            return make(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler

    def _handled(self, labels: tuple[str, str, str]) -> Callable[[str], Counter]:
        """grpc_server_handled_total's child of one method by status code, each looked up once
        (at most one per code: the codes are grpc's)."""
        children: dict[str, Counter] = {}

        def child(code: str) -> Counter:
            found = children.get(code)
            if found is None:
                found = children[code] = self.handled.labels(*labels, code)
            return found

        return child

    def _unary(
        self, labels: tuple[str, str, str], behaviour: Any
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        started, handling = self.started.labels(*labels), self.handling.labels(*labels)
        handled = self._handled(labels)

        async def measured(request: Any, context: Context) -> Any:
            started.inc()
            begun = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                handling.observe(time.perf_counter() - begun)
                handled(_code_name(context, failure)).inc()

        return measured

    def _stream(
        self, labels: tuple[str, str, str], behaviour: Any
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        started, handling = self.started.labels(*labels), self.handling.labels(*labels)
        sent = self.sent.labels(*labels)
        handled = self._handled(labels)

        async def measured(request: Any, context: Context) -> AsyncIterator[Any]:
            started.inc()
            begun = time.perf_counter()
            failure: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    sent.inc()
                    yield response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                handling.observe(time.perf_counter() - begun)
                handled(_code_name(context, failure)).inc()

        return measured
