"""Who may call the gateway, over what, and how much, on real gRPC channels: TLS and mTLS with
trustme certificates, clients known by a token's hash or a certificate, per-client
authorization and limits, tokens and certificates renewed without a restart, and the listener's
keepalive and connection age."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_status import rpc_status

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.admin import admin_app
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.cli import TOKEN_ENV
from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.rpc.clients import client_line
from dispatcher_gateway.rpc.limits import ClientQuotas
from dispatcher_gateway.rpc.server import GrpcLimits
from tests.support.cli import run_cli
from tests.support.loopback import GatewayFactory
from tests.support.pki import Pki
from tests.support.ports import free_port
from tests.support.requests import email_request, request_for

CALL_TIMEOUT = 10.0
STREAM_TIMEOUT = 10.0
ALICE, BOB = "alice.clients.example", "bob.clients.example"
CAROL, CAROL_NEXT = "dgw_carol-token-0123456789abcdef", "dgw_carol-token-fedcba9876543210"
RELEASE_TIMEOUT = 5.0
"""Seconds the gateway gets to let go of what a call held after its client went away."""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error a unary call, or a whole stream, ends with."""

    async def run() -> None:
        if isinstance(call, grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall):
            async with asyncio.timeout(STREAM_TIMEOUT):
                while await call.read() is not grpc.aio.EOF:
                    pass
        else:
            await call  # type: ignore[misc]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await run()
    return info.value


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            found.append(info)
    [info] = found
    return info


def rotate(path: Path, text: str) -> None:
    """As a deployment does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    fresh.replace(path)


@dataclass
class Secured:
    app: GatewayApp
    pki: Pki
    clients: Path
    target: str
    """TLS: bearer-token clients (and health, for anyone)."""
    mtls_target: str
    """mTLS: certificate clients."""


CLIENTS_FILE = (
    f"alice cert:{ALICE}\n"
    f"bob cert:{BOB}\n"
    f"{client_line('carol', CAROL, ['services=email', 'sync=false'])}\n"
)


@pytest.fixture
async def secured(gateways: GatewayFactory, tmp_path: Path) -> Secured:
    pki = Pki(tmp_path / "pki")
    clients = tmp_path / "clients"
    clients.write_text(CLIENTS_FILE)
    mtls_addr = f"127.0.0.1:{free_port()}"
    app = await gateways.start(
        allow_anonymous=False,
        client_tokens_file=str(clients),
        grpc_tls_cert_file=str(pki.cert_file),
        grpc_tls_key_file=str(pki.key_file),
        grpc_client_ca_file=str(pki.client_ca_file),
        grpc_mtls_addr=mtls_addr,
    )
    assert app.listeners is not None
    assert app.listeners.mtls_port == int(mtls_addr.rpartition(":")[2])
    return Secured(app, pki, clients, gateways.target, mtls_addr)


# TLS and mTLS


async def test_a_certificate_is_its_client_whoever_presents_it(secured: Secured) -> None:
    async with secured.pki.channel(
        secured.mtls_target, secured.pki.client_certificate(ALICE)
    ) as channel:
        alice = pb_grpc.DispatchServiceStub(channel)
        job = (await alice.Dispatch(email_request(), timeout=CALL_TIMEOUT)).job
        mine = await alice.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT)
        assert mine.job_id == job.job_id
    # Someone holding bob's certificate and key is bob to the gateway, whoever they are: they
    # see bob's jobs, and alice's job does not exist for them.
    async with secured.pki.channel(
        secured.mtls_target, secured.pki.client_certificate(BOB)
    ) as channel:
        as_bob = pb_grpc.DispatchServiceStub(channel)
        get = await refused(as_bob.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=10))
        watch = await refused(as_bob.WatchJob(pb.WatchJobRequest(job_id=job.job_id)))
        assert get.code() == watch.code() == grpc.StatusCode.NOT_FOUND
        listed = await as_bob.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT)
        assert list(listed.jobs) == []
        bobs = (await as_bob.Dispatch(email_request(), timeout=CALL_TIMEOUT)).job
    stored = await secured.app.store.get_job(bobs.job_id)
    assert stored is not None
    assert stored.client == "bob"


async def test_without_a_certificate_or_a_token_a_caller_is_unauthenticated(
    secured: Secured,
) -> None:
    async with secured.pki.channel(secured.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        for call in (
            stub.Dispatch(email_request(), timeout=CALL_TIMEOUT),
            stub.GetJob(pb.GetJobRequest(job_id="job_x"), timeout=CALL_TIMEOUT),
            stub.ListTemplates(pb.ListTemplatesRequest(), timeout=CALL_TIMEOUT),
            stub.Subscribe(pb.SubscribeRequest()),
        ):
            error = await refused(call)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "no credentials" in (error.details() or "")
        # Health answers anyone: load balancers and probes carry no credentials.
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # The mTLS port takes no connection without a certificate its CA signed.
    async with secured.pki.channel(secured.mtls_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        error = await refused(stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    secured: Secured,
) -> None:
    forged = secured.pki.client_certificate(ALICE, ca=trustme.CA())
    async with secured.pki.channel(secured.mtls_target, forged) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        error = await refused(stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_is_refused_on_a_tls_port(secured: Secured) -> None:
    async with grpc.aio.insecure_channel(secured.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        error = await refused(
            stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT, metadata=bearer(CAROL))
        )
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_renewed_server_certificate_serves_new_connections_without_restart(
    secured: Secured,
) -> None:
    before = secured.pki.server_ca
    secured.pki.renew_server_certificate(trustme.CA())
    async with secured.pki.channel(secured.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    secured.pki.server_ca = before
    async with secured.pki.channel(secured.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        error = await refused(health.Check(health_pb2.HealthCheckRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


# Tokens


async def test_a_rotated_token_works_at_once_and_the_old_one_is_refused(secured: Secured) -> None:
    async with secured.pki.channel(secured.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        job = (await stub.Dispatch(email_request(), timeout=10, metadata=bearer(CAROL))).job
        rotate(
            secured.clients,
            CLIENTS_FILE.replace(client_line("carol", CAROL), client_line("carol", CAROL_NEXT)),
        )
        again = await stub.GetJob(
            pb.GetJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT, metadata=bearer(CAROL_NEXT)
        )
        assert again.job_id == job.job_id
        old = await refused(
            stub.GetJob(
                pb.GetJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT, metadata=bearer(CAROL)
            )
        )
        assert old.code() == grpc.StatusCode.UNAUTHENTICATED
        assert CAROL not in (old.details() or "")


async def test_a_clients_file_listing_a_token_twice_is_refused_and_the_last_good_one_kept(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    doubled = CLIENTS_FILE + client_line("mallory", CAROL) + "\n"
    async with secured.pki.channel(secured.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        with caplog.at_level(logging.INFO, logger="dispatcher_gateway.rpc"):
            rotate(secured.clients, doubled)
            for _ in range(3):
                listed = await stub.ListJobs(
                    pb.ListJobsRequest(), timeout=CALL_TIMEOUT, metadata=bearer(CAROL)
                )
                assert list(listed.jobs) == []
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "line 4: the token hash of 'carol' is used again" in line
    assert "keeping the previous version" in line


async def test_a_client_may_be_limited_to_some_services_and_to_async(secured: Secured) -> None:
    async with secured.pki.channel(secured.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        carol = bearer(CAROL)
        sms = await refused(stub.Dispatch(request_for(pb.SERVICE_SMS), timeout=10, metadata=carol))
        chain = request_for(pb.SERVICE_FILE, chain=(pb.SERVICE_EMAIL,))
        chained = await refused(stub.Dispatch(chain, timeout=CALL_TIMEOUT, metadata=carol))
        sync = await refused(
            stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=10, metadata=carol)
        )
        validate = await refused(
            stub.Validate(request_for(pb.SERVICE_SMS), timeout=CALL_TIMEOUT, metadata=carol)
        )
        allowed = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT, metadata=carol)
    for error in (sms, chained, sync, validate):
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert sms.details() == "client 'carol' may not use service sms"
    assert chained.details() == "client 'carol' may not use service file"
    assert sync.details() == "client 'carol' may not dispatch with MODE_SYNC (sync=false)"
    assert allowed.job.state == pb.JOB_STATE_QUEUED


# Defaults


async def test_nobody_is_anonymous_unless_switched_on(gateways: GatewayFactory) -> None:
    await gateways.start(allow_anonymous=False)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        error = await refused(stub.Dispatch(email_request(), timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reflection_is_off_unless_switched_on(gateways: GatewayFactory) -> None:
    await gateways.start()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        # No request sent: the server refuses the call when it arrives, and a request the client
        # wrote after that would make grpc report its failed write (INTERNAL) instead.
        error = await refused(reflection.ServerReflectionInfo())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# Per-client limits


async def test_dispatches_beyond_a_clients_rate_are_resource_exhausted_with_retry_info(
    gateways: GatewayFactory,
) -> None:
    await gateways.start(client_quotas=ClientQuotas(dispatch_rate=RateLimit(2, 60.0)))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        for _ in range(2):
            await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
        error = await refused(stub.Dispatch(email_request(), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 25_000 <= retry_info(error).retry_delay.ToMilliseconds() <= 30_000


async def test_streams_beyond_a_clients_limit_are_refused_until_one_ends(
    gateways: GatewayFactory,
) -> None:
    app = await gateways.start(client_quotas=ClientQuotas(max_streams=2))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
        streams = [stub.Subscribe(pb.SubscribeRequest()) for _ in range(2)]
        for stream in streams:
            await asyncio.wait_for(stream.read(), STREAM_TIMEOUT)
        error = await refused(stub.WatchJob(pb.WatchJobRequest(job_id="job_x")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_info(error).retry_delay.ToMilliseconds() > 0
        streams.pop().cancel()
        async with asyncio.timeout(RELEASE_TIMEOUT):
            while app.calls.in_flight > 1:
                await asyncio.sleep(0.02)
        third = stub.Subscribe(pb.SubscribeRequest())
        assert isinstance(await asyncio.wait_for(third.read(), STREAM_TIMEOUT), pb.JobEvent)
        third.cancel()
        streams[0].cancel()


async def test_queued_jobs_beyond_a_clients_limit_are_refused_until_they_move_on(
    gateways: GatewayFactory,
) -> None:
    # An upstream nobody answers: the jobs stay queued.
    unreachable = f"http://127.0.0.1:{free_port()}"
    await gateways.start(dispatcher_base_url=unreachable, client_quotas=ClientQuotas(max_queued=2))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        for _ in range(2):
            await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
        error = await refused(stub.Dispatch(email_request(), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 jobs waiting to be sent upstream" in (error.details() or "")
    assert retry_info(error).retry_delay.ToMilliseconds() > 0


async def test_a_job_sent_upstream_frees_its_place_in_the_clients_queue(
    gateways: GatewayFactory,
) -> None:
    app = await gateways.start(client_quotas=ClientQuotas(max_queued=1))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        job = (await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)).job
        events = stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id))
        async with asyncio.timeout(STREAM_TIMEOUT):
            async for event in events:
                if event.terminal:
                    break
        events.cancel()
        # The hub tells the limits on its own tail, which may come a moment after the stream.
        async with asyncio.timeout(RELEASE_TIMEOUT):
            while app.servicer.limits.waiting("anonymous"):
                await asyncio.sleep(0.02)
        await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)


# The listener


async def test_an_old_connection_is_sent_away_and_its_stream_told_to_resume(
    gateways: GatewayFactory,
) -> None:
    await gateways.start(
        grpc_limits=GrpcLimits(max_connection_age=1.0, max_connection_age_grace=0.5)
    )
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
        stream = stub.Subscribe(pb.SubscribeRequest())
        first = await asyncio.wait_for(stream.read(), STREAM_TIMEOUT)
        assert isinstance(first, pb.JobEvent)
        error = await refused(stream)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # The channel connects again by itself: the caller resumes from its cursor.
        resumed = stub.Subscribe(pb.SubscribeRequest(after_cursor=first.cursor))
        assert isinstance(await asyncio.wait_for(resumed.read(), STREAM_TIMEOUT), pb.JobEvent)
        resumed.cancel()


async def test_a_client_pinging_more_often_than_allowed_is_sent_away(
    gateways: GatewayFactory,
) -> None:
    await gateways.start()  # at most one ping in 30 s without data
    pinging = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(gateways.target, options=pinging) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        error = await refused(stub.Subscribe(pb.SubscribeRequest(live_only=True)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Too many pings" in (error.details() or "")


# The admin port


@pytest.mark.parametrize("details", [False, True], ids=["default", "READYZ_DETAILS"])
async def test_readyz_tells_why_the_store_is_down_to_loopback_callers_or_when_asked(
    gateways: GatewayFactory, monkeypatch: pytest.MonkeyPatch, details: bool
) -> None:
    app = await gateways.start(readyz_details=details)
    why = "nats://10.0.0.5:4222: connection refused"

    async def down() -> None:
        raise StoreUnavailable(why)

    monkeypatch.setattr(app.store, "check", down)
    admin = admin_app(app)
    for peer, told in (("127.0.0.1", True), ("::1", True), ("203.0.113.9", details)):
        transport = httpx.ASGITransport(app=admin, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            answer = await http.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["store"] == (f"unavailable: {why}" if told else "unavailable")


# The command line


async def test_the_cli_calls_over_tls_with_a_token_or_a_client_certificate(
    secured: Secured,
) -> None:
    ca = str(secured.pki.server_ca_file)
    code, out, err = await run_cli(
        "dispatch", "--target", secured.target, "--ca", ca, "--to", "ada@example.com",
        env={TOKEN_ENV: CAROL},
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("job job_")
    code, out, err = await run_cli("jobs", "--target", secured.target, "--ca", ca)
    assert (code, err) == (1, "error: UNAUTHENTICATED: no credentials: send 'authorization: "
                           "Bearer TOKEN' or a client certificate\n")  # fmt: skip
    cert, key = secured.pki.client_certificate_files(ALICE)
    code, out, err = await run_cli(
        "dispatch", "--target", secured.mtls_target, "--ca", ca, "--cert", str(cert),
        "--key", str(key), "--to", "ada@example.com",
    )  # fmt: skip
    assert code == 0, err
    job_id = out.split()[1].rstrip(":")
    code, out, err = await run_cli(
        "jobs", "--target", secured.mtls_target, "--ca", ca, "--cert", str(cert), "--key", str(key)
    )
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == [job_id]
