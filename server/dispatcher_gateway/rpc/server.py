"""The gRPC server: DispatchService next to grpc.health.v1 and (if switched on) server
reflection, behind the CallGuard interceptor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as reflection_service

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

from .auth import Authenticator
from .drain import Drain
from .interceptor import CallGuard
from .servicer import DispatchServicer

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["DispatchService"].full_name


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """gRPC core cancels calls waiting unaccepted beyond the pending-request limits (defaults 1000
    soft, 3000 hard): a burst of thousands of calls or streams needs them raised on purpose."""

    max_pending_requests: int = 20_000
    max_pending_requests_hard_limit: int = 40_000
    max_concurrent_streams: int = 20_000
    max_receive_message_length: int = 4 << 20
    keepalive_time: float = 120.0
    """Seconds between the server's pings on a connection with calls: a client gone without a
    word (its streams counting against its limit) is found out within this and the timeout."""
    keepalive_timeout: float = 20.0
    min_ping_interval: float = 30.0
    """A client pinging more often than this (without data) is sent GOAWAY after two strikes."""
    permit_ping_without_calls: bool = False
    max_connection_age: float = 1800.0
    """Seconds before a connection is asked to go (GOAWAY), so that clients spread over
    replicas again and no connection lives for ever."""
    max_connection_age_grace: float = 1800.0
    """Seconds its calls then have to finish: as long as a stream's own maximum age, so that
    streams end with their resumable status rather than a cut connection."""

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.server.max_pending_requests", self.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", self.max_pending_requests_hard_limit),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_receive_message_length", self.max_receive_message_length),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout)),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(self.min_ping_interval)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_ping_without_calls)),
            ("grpc.max_connection_age_ms", _ms(self.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", _ms(self.max_connection_age_grace)),
            # Two gateways must never share a port by accident.
            ("grpc.so_reuseport", 0),
        ]


def _ms(seconds: float) -> int:
    return min(round(seconds * 1000), 2**31 - 1)


def create_server(
    servicer: DispatchServicer,
    health_servicer: health.aio.HealthServicer,
    limits: GrpcLimits,
    *,
    auth: Authenticator,
    drain: Drain,
    reflection: bool = False,
    outer: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """DispatchService (callers authenticated, calls counted for `drain`), health (anyone may
    ask) and, if asked for, reflection. `outer`: interceptors that see every call before the
    guard (tracing's). `reuse_port`: the port is shared with the other workers of one gateway
    (GATEWAY_WORKERS), the kernel spreading connections over them."""
    guard = CallGuard(auth, drain, services=frozenset({SERVICE_NAME}))
    options = limits.options()
    if reuse_port:
        options = [*(o for o in options if o[0] != "grpc.so_reuseport"), ("grpc.so_reuseport", 1)]
    server = grpc.aio.server(interceptors=[*outer, guard], options=options)
    pb_grpc.add_DispatchServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        reflection_service.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection_service.SERVICE_NAME), server
        )
    return server


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
