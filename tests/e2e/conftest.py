"""Real parts on loopback: the sandbox as a real HTTP server, the gateway's webhook on real HTTPS
with a test CA, real gRPC channels."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import trustme

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.config import Settings
from dispatcher_gateway.core.retry import RateLimit, RetryPolicy
from dispatcher_gateway.httpserver import HttpServer
from dispatcher_gateway.sandbox import Sandbox, SandboxSettings, serve_sandbox

SANDBOX_EMAIL = "sandbox@example.com"
SANDBOX_PASSWORD = "sandbox-test-password"
WEBHOOK_SECRET = "whsec-test-secret"
TIME_FACTOR = 0.002
"""Webhook retries 5 s, 5 min ... become 10 ms, 0.6 s ..."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(str(folder / "ca.pem"), str(folder / "cert.pem"), str(folder / "key.pem"))
    ca.cert_pem.write_to_path(files.ca)
    leaf.cert_chain_pems[0].write_to_path(files.cert)
    leaf.private_key_pem.write_to_path(files.key)
    return files


@dataclass
class RunningSandbox:
    sandbox: Sandbox
    server: HttpServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def sandbox_options() -> dict[str, object]:
    """Override with @pytest.mark.parametrize("sandbox_options", [{...}]) for one test."""
    return {}


@pytest.fixture
async def sandbox(
    tls: TlsFiles, sandbox_options: dict[str, object]
) -> AsyncIterator[RunningSandbox]:
    options: dict[str, object] = {"time_factor": TIME_FACTOR, **sandbox_options}
    settings = SandboxSettings(
        email=SANDBOX_EMAIL,
        password=SANDBOX_PASSWORD,
        webhook_secrets=(WEBHOOK_SECRET,),
        callback_ca=tls.ca,
        **options,  # type: ignore[arg-type]
    )
    sandbox, server = await serve_sandbox(settings, "127.0.0.1", 0)
    try:
        yield RunningSandbox(sandbox, server)
    finally:
        await sandbox.close()
        await server.stop()


@dataclass
class GatewayFactory:
    """Starts gateways against the sandbox; each start may reuse the store and ports of the last
    (a restart)."""

    sandbox: RunningSandbox
    tls: TlsFiles
    store_path: Path
    grpc_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    running: list[GatewayApp] = field(default_factory=list)

    def settings(self, **changes: object) -> Settings:
        base = Settings(
            dispatcher_base_url=self.sandbox.url,
            dispatcher_email=SANDBOX_EMAIL,
            dispatcher_password=SANDBOX_PASSWORD,
            webhook_secrets=(WEBHOOK_SECRET,),
            public_url=f"https://127.0.0.1:{self.webhook_port}",
            grpc_addr=f"127.0.0.1:{self.grpc_port}",
            webhook_addr=f"127.0.0.1:{self.webhook_port}",
            admin_addr="127.0.0.1:0",
            store=str(self.store_path),
            tls_cert_file=self.tls.cert,
            tls_key_file=self.tls.key,
            upstream_rate=RateLimit(6000, 60.0),
            retry=RetryPolicy(base=0.05, cap=0.5, give_up_after=60.0),
            # Most tests are about something else than who calls: tests/e2e/test_security.py
            # starts gateways without it.
            allow_anonymous=True,
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    async def start(self, **changes: object) -> GatewayApp:
        app = GatewayApp(self.settings(**changes))
        await app.start()
        self.running.append(app)
        return app

    async def stop(self, app: GatewayApp) -> None:
        await app.drain(grace=1.0)
        self.running.remove(app)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"


@pytest.fixture
async def gateways(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(sandbox, tls, tmp_path / "gateway.db")
    try:
        yield factory
    finally:
        for app in list(factory.running):
            await factory.stop(app)


@pytest.fixture
async def gateway(gateways: GatewayFactory) -> GatewayApp:
    return await gateways.start()


@pytest.fixture
async def stub(
    gateways: GatewayFactory, gateway: GatewayApp
) -> AsyncIterator[pb_grpc.DispatchServiceStub]:
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        yield pb_grpc.DispatchServiceStub(channel)


def email_request(**changes: object) -> pb.DispatchRequest:
    request = pb.DispatchRequest(
        service=pb.SERVICE_EMAIL,
        template=pb.Template(id=1),
        email=pb.EmailOptions(
            sender=pb.EmailAddress(email="noreply@example.com"),
            to=[pb.EmailAddress(email="ada@example.com")],
            subject="Hello",
            text="Hi Ada",
        ),
    )
    request.MergeFrom(pb.DispatchRequest(**changes))  # type: ignore[arg-type]
    return request


def request_for(service: int, *, chain: Iterator[int] | tuple[int, ...] = ()) -> pb.DispatchRequest:
    """A valid request for a service (and chain), as the sandbox checks them."""
    request = pb.DispatchRequest(service=service, chain=list(chain), template=pb.Template(id=1))
    services = {service, *chain}
    if pb.SERVICE_EMAIL in services:
        request.email.CopyFrom(email_request().email)
    if pb.SERVICE_SMS in services:
        request.sms.to.append("+33600000000")
        request.sms.text = "Hi"
    if pb.SERVICE_POSTAL in services:
        request.postal.to.CopyFrom(
            pb.PostalAddress(
                name="Ada Lovelace",
                address_line1="1 rue de la Paix",
                city="Paris",
                postal_code="75002",
                country="FR",
            )
        )
    if pb.SERVICE_ESIGN in services:
        request.esign.document_name = "Contract"
        request.esign.signers.append(pb.Signer(email="ada@example.com"))
    if pb.SERVICE_INVOICING in services:
        request.invoicing.document_type = "INVOICE"
    return request
