"""Real parts on loopback for the end-to-end suites: a free port, a test CA and its certificate,
the sandbox as a real HTTP server, and gateways started in this process against it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.config import Settings
from dispatcher_gateway.core.retry import RateLimit, RetryPolicy
from dispatcher_gateway.httpserver import HttpServer
from dispatcher_gateway.sandbox import Sandbox, SandboxSettings, serve_sandbox
from dispatcher_gateway.tracing import Tracing

from .ports import free_port

HOST = "127.0.0.1"
SANDBOX_EMAIL = "sandbox@example.com"
SANDBOX_PASSWORD = "sandbox-test-password"
WEBHOOK_SECRET = "whsec-test-secret"
TIME_FACTOR = 0.002
"""Webhook retries 5 s, 5 min ... become 10 ms, 0.6 s ..."""


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


def issue_tls(folder: Path) -> TlsFiles:
    """A test CA and a certificate it signed for 127.0.0.1 and localhost, as files."""
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST, "localhost")
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

    async def close(self) -> None:
        await self.sandbox.close()
        await self.server.stop()


async def start_sandbox(tls: TlsFiles, **options: object) -> RunningSandbox:
    """The sandbox on a free loopback port, its time sped up by TIME_FACTOR unless `options`
    say otherwise, calling back over HTTPS trusting the test CA."""
    settings = SandboxSettings(
        email=SANDBOX_EMAIL,
        password=SANDBOX_PASSWORD,
        webhook_secrets=(WEBHOOK_SECRET,),
        callback_ca=tls.ca,
        **{"time_factor": TIME_FACTOR, **options},  # type: ignore[arg-type]
    )
    sandbox, server = await serve_sandbox(settings, HOST, 0)
    return RunningSandbox(sandbox, server)


@dataclass
class GatewayFactory:
    """Starts gateways in this process against the sandbox; each start may reuse the store and
    ports of the last (a restart)."""

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
            public_url=f"https://{HOST}:{self.webhook_port}",
            grpc_addr=f"{HOST}:{self.grpc_port}",
            webhook_addr=f"{HOST}:{self.webhook_port}",
            admin_addr=f"{HOST}:0",
            # Any free port: the JSON face's clients ask the running gateway for it (http_url).
            http_addr=f"{HOST}:0",
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

    async def start(self, *, tracing: Tracing | None = None, **changes: object) -> GatewayApp:
        app = GatewayApp(self.settings(**changes), tracing=tracing)
        await app.start()
        self.running.append(app)
        return app

    async def stop(self, app: GatewayApp) -> None:
        await app.drain(grace=1.0)
        self.running.remove(app)

    async def stop_all(self) -> None:
        for app in list(self.running):
            await self.stop(app)

    @property
    def target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The JSON face: a method is `{http_url}/dispatcher.gateway.v1.DispatchService/M`."""
        listeners = self.running[-1].listeners
        assert listeners is not None
        assert listeners.http is not None
        return listeners.http.url

    @property
    def webhook_url(self) -> str:
        return f"https://{HOST}:{self.webhook_port}"
