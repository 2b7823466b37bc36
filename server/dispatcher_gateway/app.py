"""The composition root: the one place that knows every part. Builds the store, the upstream
client, core, the gRPC server and the two HTTP listeners; runs them on one event loop; drains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from grpc_health.v1 import health
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .config import Settings, is_loopback, split_addr
from .core.breaker import BreakerState, CircuitBreaker
from .core.errors import ShuttingDown, StoreUnavailable
from .core.gateway import Gateway, OutboxLimits
from .core.hub import EventHub
from .core.ports import Store
from .core.tokens import CallbackTokens
from .httpserver import HttpServer, start_http
from .metrics import Counts, GatewayGauges, Metrics
from .rpc.auth import Authenticator
from .rpc.clients import ClientsFile
from .rpc.drain import Drain
from .rpc.limits import ClientLimits
from .rpc.metrics import ServerMetrics
from .rpc.server import create_server, set_serving
from .rpc.servicer import DispatchServicer
from .rpc.tls import CertificateFiles
from .upstream import DispatcherClient
from .webhooks import WebhookVerifier, create_webhook_app

log = logging.getLogger("dispatcher_gateway")

DRAIN_GRACE = 20.0
"""Seconds in-flight calls get to finish on SIGTERM (Kubernetes waits 30 s by default)."""
READY_CHECK_TIMEOUT = 2.0
STORE_CHECK_INTERVAL = 1.0
"""Seconds between the looks at the store that keep gRPC health in step with it."""
STATUS_FLUSH = 0.1
"""Seconds for the last statuses of ended calls to leave before the server cancels the rest."""
CALLBACK_KEY_NAME = "callback-token-key"
STORE_OPEN_RETRY = 1.0
STORE_OPEN_RETRY_MAX = 15.0
"""Seconds between attempts to open a store that does not answer yet (doubling up to this):
started before its NATS cluster, or while the cluster has no stream leaders, the gateway waits,
not ready, rather than exiting into a restart loop."""


def open_store(settings: Settings) -> Store:
    """`nats://host:port[,host:port...]` selects NATS JetStream; anything else is an SQLite
    file path (optionally `sqlite:` prefixed)."""
    spec = settings.store
    if spec.startswith(("nats://", "tls://")):
        from .store.nats import NatsStore

        return NatsStore(
            [s.strip() for s in spec.split(",") if s.strip()],
            replicas=settings.nats_replicas,
            event_max_age=settings.event_retention,
            ca_file=settings.nats_ca_file,
            token=settings.nats_token,
        )
    from .store.sqlite import SqliteStore

    return SqliteStore(spec.removeprefix("sqlite:"))


@dataclass
class Listeners:
    grpc_port: int
    webhook: HttpServer
    admin: HttpServer
    mtls_port: int | None = None
    """The port certificate clients call (with GATEWAY_GRPC_CLIENT_CA_FILE)."""


class GatewayApp:
    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.health = health.aio.HealthServicer()
        self.hub = EventHub(backlog=settings.stream_backlog)
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._store_watch: asyncio.Task[None] | None = None
        self.listeners: Listeners | None = None
        self.opened = False
        self.store_up = False
        """Whether the store answered the last look at it (every second once started)."""
        self.started_at = time.time()
        self.metrics = Metrics()
        self.counts = Counts(self.metrics)
        # Scraped from the start: a gateway waiting for its store is seen as one (store_up 0).
        self.metrics.registry.register(
            GatewayGauges(
                self.counts,
                streams=lambda: self.hub.streams,
                circuit=self._circuit_state,
                store_up=lambda: self.store_up,
                states=[state.value for state in BreakerState],
            )
        )

    def _circuit_state(self) -> str:
        gateway: Gateway | None = getattr(self, "gateway", None)
        return gateway.caller.breaker.state.value if gateway is not None else "closed"

    async def start(self) -> Listeners:
        """Admin first, so that probes see a live process (not ready) while the store is awaited;
        cancelled (SIGTERM) while waiting, it closes what it opened."""
        admin_host, admin_port = split_addr(self.settings.admin_addr)
        admin = await start_http(self._admin_app(), admin_host, admin_port)
        try:
            await self._open_store()
            return await self._start(admin)
        except BaseException:
            await admin.stop()
            await self.store.close()
            raise

    async def _open_store(self) -> None:
        delay = STORE_OPEN_RETRY
        while True:
            try:
                await self.store.open()
                return
            except StoreUnavailable as exc:
                log.warning("store unavailable (%s): trying again in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_OPEN_RETRY_MAX)

    async def _start(self, admin: HttpServer) -> Listeners:
        s = self.settings
        key = s.token_key or await self.store.secret(CALLBACK_KEY_NAME)
        self.upstream = DispatcherClient(
            s.dispatcher_base_url,
            s.dispatcher_email,
            s.dispatcher_password,
            verify=s.dispatcher_ca_file or True,
        )
        self.gateway = Gateway.build(
            self.store,
            self.upstream,
            CallbackTokens(key),
            public_url=s.public_url,
            rate=s.upstream_rate,
            hub=self.hub,
            retry=s.retry,
            breaker=CircuitBreaker(threshold=s.breaker_threshold, open_for=s.breaker_open_for),
            callbacks=s.callbacks,
            outbox=OutboxLimits(
                submit_timeout=s.submit_timeout,
                sync_timeout=s.sync_timeout,
                sync_concurrency=s.sync_concurrency,
            ),
            observer=self.counts,
        )
        self.opened = True
        self.store_up = True
        auth = Authenticator(
            ClientsFile(s.client_tokens_file) if s.client_tokens_file else None,
            allow_anonymous=s.allow_anonymous,
        )
        limits = ClientLimits(s.client_quotas)
        self.hub.observe(limits.observe)
        self.servicer = DispatchServicer(self.gateway, limits, max_stream_age=s.max_stream_age)
        self.calls = Drain()
        self.grpc = create_server(
            self.servicer,
            self.health,
            s.grpc_limits,
            auth=auth,
            drain=self.calls,
            reflection=s.grpc_reflection,
            metrics=ServerMetrics(self.metrics.registry),
        )
        grpc_port, mtls_port = self._grpc_ports()
        await self.grpc.start()

        webhook_host, webhook_port = split_addr(s.webhook_addr)
        verifier = WebhookVerifier(s.webhook_secrets, require_timestamp=s.webhook_require_timestamp)
        webhooks = create_webhook_app(self.gateway.webhooks, verifier, observer=self.counts)
        webhook = await start_http(
            webhooks, webhook_host, webhook_port, certfile=s.tls_cert_file, keyfile=s.tls_key_file
        )

        self._tasks = [
            asyncio.create_task(self.hub.follow(self.store), name="hub"),
            asyncio.create_task(self.gateway.outbox.run(), name="outbox"),
        ]
        await set_serving(self.health, True)
        self._store_watch = asyncio.create_task(self._watch_store(), name="store-watch")
        self.listeners = Listeners(grpc_port, webhook, admin, mtls_port)
        log.info(
            "gateway ready: gRPC on %s (port %d, %s), webhooks on %s, admin on %s, store %s",
            s.grpc_addr,
            grpc_port,
            "plaintext"
            if mtls_port is None and s.grpc_tls_cert_file is None
            else "TLS" + (f"; mTLS on port {mtls_port}" if mtls_port is not None else ""),
            webhook.url,
            admin.url,
            type(self.store).__name__,
        )
        if s.allow_anonymous:
            log.warning("anonymous access is on: a call without credentials is 'anonymous'")
        return self.listeners

    def _grpc_ports(self) -> tuple[int, int | None]:
        """The gRPC port, over TLS when a certificate is configured; and with a client CA, the
        port of certificate clients (mTLS)."""
        s = self.settings
        if s.grpc_tls_cert_file is None or s.grpc_tls_key_file is None:
            return self.grpc.add_insecure_port(s.grpc_addr), None
        tls = CertificateFiles(s.grpc_tls_cert_file, s.grpc_tls_key_file)
        port = self.grpc.add_secure_port(s.grpc_addr, tls.credentials())
        if s.grpc_client_ca_file is None:
            return port, None
        mtls = CertificateFiles(s.grpc_tls_cert_file, s.grpc_tls_key_file, s.grpc_client_ca_file)
        return port, self.grpc.add_secure_port(s.grpc_mtls_addr, mtls.credentials())

    async def drain(self, grace: float = DRAIN_GRACE) -> None:
        """SIGTERM: not serving, refuse new calls, finish in-flight ones, end streams with a
        resumable UNAVAILABLE, stop the workers, close the store."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: in-flight calls have %.0f s", grace)
        # Stopped first, so that it cannot turn health back to SERVING half-way through.
        if self._store_watch is not None:
            self._store_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_watch
        await set_serving(self.health, False)
        # Refuse new calls with UNAVAILABLE (clients retry it, elsewhere), end our streams with
        # their resumable status, and let unary calls in flight finish. Then stop the server,
        # without waiting the whole grace for streams nothing else ends (a health Watch).
        self.calls.start()
        self.hub.close(ShuttingDown("the gateway is shutting down"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.calls.idle.wait(), grace)
        await asyncio.sleep(STATUS_FLUSH)
        await self.grpc.stop(0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.listeners is not None:
            await asyncio.gather(self.listeners.webhook.stop(), self.listeners.admin.stop())
        await self.upstream.close()
        await self.store.close()
        log.info("drained")

    async def _watch_store(self) -> None:
        """grpc.health.v1 says NOT_SERVING while the store does not answer, and SERVING again
        as soon as it does: a load balancer or client checking health sends calls elsewhere
        meanwhile. /readyz asks the store itself on each request."""
        serving = True
        while True:
            await asyncio.sleep(STORE_CHECK_INTERVAL)
            try:
                await asyncio.wait_for(self.store.check(), READY_CHECK_TIMEOUT)
            # Anything but an answer counts as no answer: this loop must outlive every outage.
            except Exception as exc:
                self.store_up = False
                if serving:
                    why = str(exc) or type(exc).__name__
                    log.warning("store unavailable (%s): gRPC health NOT_SERVING", why)
                    serving = False
                    await set_serving(self.health, False)
                continue
            self.store_up = True
            if not serving:
                log.info("store answers again: gRPC health SERVING")
                serving = True
                await set_serving(self.health, True)

    def _admin_app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def readyz(request: Request) -> Response:
            if not self.opened:
                return JSONResponse({"ready": False, "store": "opening"}, status_code=503)
            store = "ok"
            try:
                await asyncio.wait_for(self.store.check(), READY_CHECK_TIMEOUT)
            except (StoreUnavailable, TimeoutError) as exc:
                store = "unavailable"
                # The store's own words name hosts and paths: for operators on the machine.
                peer = request.client.host if request.client else ""
                if str(exc) and (self.settings.readyz_details or is_loopback(peer)):
                    store = f"unavailable: {exc}"
            ready = store == "ok" and not self.draining
            body = {
                "ready": ready,
                "draining": self.draining,
                "store": store,
                "streams": self.hub.streams,
                # Reported, not a reason to be unready: an open circuit still accepts and queues.
                "upstream_circuit": self.gateway.caller.breaker.describe(),
            }
            return JSONResponse(body, status_code=200 if ready else 503)

        async def metrics(request: Request) -> Response:
            page, media_type = self.metrics.render(request.headers.get("accept", ""))
            return Response(page, media_type=media_type)

        return Starlette(
            routes=[
                Route("/healthz", healthz),
                Route("/readyz", readyz),
                Route("/metrics", metrics),
            ]
        )
