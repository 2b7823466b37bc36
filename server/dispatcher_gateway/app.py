"""The composition root: the one place that knows every part. Builds the store, the upstream
client, core, the gRPC server and the two HTTP listeners; runs them on one event loop; drains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from grpc_health.v1 import health
from starlette.applications import Starlette

from .admin import READY_CHECK_TIMEOUT, admin_app
from .config import Settings
from .config_values import split_addr
from .console import Console, ConsoleSources, CoreActions, LiveFeed, Operators, Sessions
from .core.breaker import BreakerState, CircuitBreaker
from .core.errors import ShuttingDown, StoreUnavailable
from .core.fairshare import equal_weights
from .core.gateway import Gateway, OutboxLimits
from .core.hub import EventHub
from .core.ports import Store
from .core.tokens import CallbackTokens
from .httpserver import HttpServer, start_http
from .metrics import Counts, GatewayGauges, Metrics
from .rpc import connections
from .rpc.auth import Authenticator
from .rpc.clients import ClientsFile
from .rpc.drain import Drain
from .rpc.json_face import JsonFace
from .rpc.limits import ClientLimits
from .rpc.metrics import ServerMetrics
from .rpc.server import create_server, set_serving
from .rpc.servicer import DispatchServicer
from .rpc.tls import CertificateFiles
from .tracing import SpanLinks, Tracing
from .upstream import DispatcherClient
from .webhooks import WebhookVerifier, create_webhook_app
from .workerslot import WorkerSlot

log = logging.getLogger("dispatcher_gateway")

DRAIN_GRACE = 20.0
"""Seconds in-flight calls get to finish on SIGTERM (Kubernetes waits 30 s by default)."""
STORE_CHECK_INTERVAL = 1.0
"""Seconds between the looks at the store that keep gRPC health in step with it."""
STATUS_FLUSH = 0.1
"""Seconds for the last status of a client's calls to leave before a drain closes its
connection."""
RELEASE_POLL = 0.05
"""Seconds between a drain's looks for client connections whose calls are done."""
WORKER_RECANCEL = 0.5
"""Seconds between cancellations of a worker that has not ended yet (see _stop_workers)."""
CALLBACK_KEY_NAME = "callback-token-key"
CONSOLE_KEY_NAME = "console-session-key"
STORE_OPEN_RETRY = 1.0
STORE_OPEN_RETRY_MAX = 15.0
"""Seconds between attempts to open a store that does not answer yet (doubling up to this):
started before its NATS cluster, or while the cluster has no stream leaders, the gateway waits,
not ready, rather than exiting into a restart loop."""


def _left(deadline: float) -> float:
    return max(0.0, deadline - asyncio.get_running_loop().time())


def _waiting_at(task: asyncio.Task[None]) -> str:
    """Where a task waits: the chain of its coroutines' files and lines, innermost last."""
    frames: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename.rpartition('/')[2]}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return " > ".join(frames[-4:]) or "?"


def open_store(settings: Settings, worker: WorkerSlot | None = None) -> Store:
    """`nats://host:port[,host:port...]` selects NATS JetStream; anything else is an SQLite
    file path (optionally `sqlite:` prefixed). A worker's SQLite store wakes the others'
    tails after each commit (NATS delivers to every worker itself)."""
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
    from .store.sqlite import Neighbours, SqliteStore

    neighbours = None if worker is None else Neighbours(worker.group, worker.index, worker.count)
    return SqliteStore(spec.removeprefix("sqlite:"), neighbours=neighbours)


@dataclass
class Listeners:
    grpc_port: int
    webhook: HttpServer
    admin: HttpServer
    mtls_port: int | None = None
    """The port certificate clients call (with GATEWAY_GRPC_CLIENT_CA_FILE)."""
    http: HttpServer | None = None
    """DispatchService as JSON over HTTP (with GATEWAY_HTTP_ADDR)."""
    console: HttpServer | None = None
    """The operators' console (with GATEWAY_CONSOLE_ADDR)."""


class GatewayApp:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        tracing: Tracing | None = None,
        worker: WorkerSlot | None = None,
    ) -> None:
        """`tracing`: off when not given (cli/serve.py reads it from OTEL_*). `worker`: this
        process is one of several serving the gateway's listeners (cli/workers.py)."""
        self.settings = settings
        self.tracing = tracing or Tracing()
        self.worker = worker
        self.store = store or open_store(settings, worker)
        self.health = health.aio.HealthServicer()
        self.hub = EventHub(backlog=settings.stream_backlog)
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._hub_task: asyncio.Task[None] | None = None
        self._store_watch: asyncio.Task[None] | None = None
        self.listeners: Listeners | None = None
        self.console: Console | None = None
        self.serving = False
        """Every listener is up: /readyz answers ready (store permitting) only from then on."""
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
        admin_sock = self.worker.admin if self.worker is not None else None
        admin = await start_http(admin_app(self), admin_host, admin_port, sock=admin_sock)
        try:
            await self._open_store()
            return await self._start(admin)
        except BaseException:
            # A server grpc started must be stopped in this loop, or it is at exit, noisily.
            server = getattr(self, "grpc", None)
            if server is not None:
                await server.stop(0)
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
            tracing=self.tracing,
        )
        clients = ClientsFile(s.client_tokens_file) if s.client_tokens_file else None
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
            traces=SpanLinks() if self.tracing.enabled else None,
            weights=clients.weight if clients is not None else equal_weights,
            schedule=s.schedule,
        )
        self.store_up = True
        auth = Authenticator(clients, allow_anonymous=s.allow_anonymous)
        limits = ClientLimits(s.client_quotas)
        self.hub.observe(limits.observe)
        self.servicer = DispatchServicer(
            self.gateway, limits, max_stream_age=s.max_stream_age, batch_max=s.batch_max
        )
        self.calls = Drain()
        self.grpc = create_server(
            self.servicer,
            self.health,
            s.grpc_limits,
            auth=auth,
            drain=self.calls,
            reflection=s.grpc_reflection,
            outer=[*self.tracing.grpc_interceptors(), ServerMetrics(self.metrics.registry)],
            reuse_port=self.worker is not None,
        )
        grpc_port, mtls_port = self._grpc_ports()
        # Where the hub's tail begins, read before any stream can: one that begins as soon as
        # gRPC listens reads the store after this, so the tail has every event it may lack.
        hub_after = await self.store.last_cursor()
        await self.grpc.start()

        webhook_host, webhook_port = split_addr(s.webhook_addr)
        verifier = WebhookVerifier(s.webhook_secrets, require_timestamp=s.webhook_require_timestamp)
        webhooks = create_webhook_app(
            self.gateway.webhooks, verifier, observer=self.counts, hub=self.hub
        )
        self.tracing.instrument_webhooks(webhooks)
        worker = self.worker
        webhook = await start_http(
            webhooks,
            webhook_host,
            webhook_port,
            certfile=s.tls_cert_file,
            keyfile=s.tls_key_file,
            sock=worker.webhook if worker is not None else None,
            reuse_port=worker is not None,
        )
        http = None
        if s.http_addr is not None:
            # The gRPC face's servicer, callers and drain: one service, two encodings.
            face = JsonFace(self.servicer, auth, self.calls)
            http_host, http_port = split_addr(s.http_addr)
            http = await start_http(
                face.app(),
                http_host,
                http_port,
                certfile=s.grpc_tls_cert_file,
                keyfile=s.grpc_tls_key_file,
                sock=worker.http if worker is not None else None,
                reuse_port=worker is not None,
            )

        console = await self._start_console() if s.console.addr is not None else None

        self._hub_task = asyncio.create_task(self.hub.follow(self.store, hub_after), name="hub")
        self._tasks = [
            self._hub_task,
            asyncio.create_task(self.gateway.outbox.run(), name="outbox"),
        ]
        await set_serving(self.health, True)
        self._store_watch = asyncio.create_task(self._watch_store(), name="store-watch")
        self.listeners = Listeners(grpc_port, webhook, admin, mtls_port, http, console)
        self.serving = True
        log.info(
            "gateway ready: gRPC on %s (port %d, %s), webhooks on %s, admin on %s, store %s%s",
            s.grpc_addr,
            grpc_port,
            "plaintext"
            if mtls_port is None and s.grpc_tls_cert_file is None
            else "TLS" + (f"; mTLS on port {mtls_port}" if mtls_port is not None else ""),
            webhook.url,
            admin.url,
            type(self.store).__name__,
            f", JSON over HTTP on {http.url}" if http is not None else "",
        )
        if console is not None:
            log.info("console on %s", console.url)
        if s.allow_anonymous:
            log.warning("anonymous access is on: a call without credentials is 'anonymous'")
        return self.listeners

    async def _start_console(self) -> HttpServer:
        """The operators' console, fed by the hub (every replica's events)."""
        s = self.settings.console
        assert s.addr is not None
        feed = LiveFeed(rate_window=self.settings.upstream_rate.window)
        self.hub.observe(feed.observe)
        self.console = Console(
            ConsoleSources(
                store=self.store,
                records=self.gateway.records,
                callbacks=self.settings.callbacks,
                rate=self.settings.upstream_rate,
                breaker=self.gateway.caller.breaker.describe,
                outbox=self.counts.outbox,
                streams=lambda: self.hub.streams,
                webhooks_refused=self.metrics.webhooks_refused,
                actions=CoreActions(self.gateway.control),
            ),
            feed,
            Sessions(await self.store.secret(CONSOLE_KEY_NAME)),
            Operators.load(s.operators_file) if s.auth and s.operators_file else None,
        )
        host, port = split_addr(s.addr)
        return await start_http(
            self.console.app(),
            host,
            port,
            certfile=s.tls_cert_file,
            keyfile=s.tls_key_file,
            reuse_port=self.worker is not None,
        )

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
        """SIGTERM: not serving; new calls refused UNAVAILABLE; streams ended with their
        resumable UNAVAILABLE; each client connection closed as soon as no call of its own runs,
        so that clients reconnect (through the Service) to another replica; unary calls in
        flight finish within `grace`; then the rest is cut, the listeners stop, the store closes.

        Every step is bounded: the whole takes at most `grace` + STATUS_FLUSH + the HTTP
        listeners' SHUTDOWN_GRACE + the store's close, what the manifests' grace covers."""
        if self.draining:
            return
        self.draining = True
        deadline = asyncio.get_running_loop().time() + grace
        started = time.monotonic()
        log.info("draining: in-flight calls have %.0f s", grace)
        # Stopped first, so that it cannot turn health back to SERVING half-way through.
        if self._store_watch is not None:
            await _cancelled(self._store_watch)
        await set_serving(self.health, False)
        # From now on a call that reaches a handler is refused UNAVAILABLE, by the CallGuard:
        # the gRPC server keeps running until no client is left on it (see _release_clients).
        self.calls.start()
        self.hub.close(ShuttingDown("the gateway is shutting down"))
        if self.console is not None:
            self.console.close()
        # The workers stop meanwhile, within the same grace: the hub has no stream left to feed;
        # the outbox leases nothing more and lets its submissions finish (its entries are leased
        # by the other replicas, and what it was sending comes back to them if cut).
        self.gateway.outbox.close()
        self.gateway.dispatches.close()
        if self._hub_task is not None:
            self._hub_task.cancel()
        stopping = None
        if connections.listable():
            await self._release_clients(deadline)
        else:
            # No connection can be closed here: grpc's GOAWAY, with its shutdown.
            stopping = asyncio.create_task(self.grpc.stop(grace), name="grpc-stop")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.calls.idle.wait(), _left(deadline))
        if self.calls.in_flight:
            log.warning(
                "drain: %d call(s) still running after %.0f s are cut; their jobs stay "
                "recorded and are sent from the outbox",
                self.calls.in_flight,
                grace,
            )
        await self._stop_workers(deadline)
        # Every connection closed, those of calls beyond the grace and of streams nothing else
        # ends (a health Watch) too: grpc's shutdown finds no client to answer CANCELLED.
        connections.close_idle(self._grpc_listening_ports(), set())
        await self.grpc.stop(0)
        if stopping is not None:
            await stopping
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("drain: %s failed", task.get_name(), exc_info=task.exception())
        if self.listeners is not None:
            servers = [
                self.listeners.webhook,
                self.listeners.admin,
                self.listeners.http,
                self.listeners.console,
            ]
            await asyncio.gather(*(server.stop() for server in servers if server is not None))
        await self.upstream.close()
        await self.store.close()
        self.tracing.shutdown()
        log.info("drained in %.2f s", time.monotonic() - started)

    async def _release_clients(self, deadline: float) -> None:
        """Every gRPC client connection closed as soon as no call of its own runs and its last
        status had STATUS_FLUSH to leave; until none is left and no call runs, or the grace is
        spent. A client's calls sent meanwhile are refused UNAVAILABLE or, on a connection
        closed, fail UNAVAILABLE: it retries, on a new connection, elsewhere.

        Not grpc's GOAWAY: grpcio sends it only with its shutdown, which cancels (CANCELLED)
        every call that reaches it from that instant (see rpc/connections.py)."""
        # No client connects from now on: the set of connections to close can only shrink (what
        # was already connected is taken up by grpc meanwhile).
        connections.stop_accepting(self._grpc_listening_ports())
        # Calls ending from now on are known (Drain.busy); those that ended before have had this.
        await asyncio.sleep(STATUS_FLUSH)
        closed: set[connections.Address] = set()
        while True:
            ports, busy = self._grpc_listening_ports(), self.calls.busy(STATUS_FLUSH)
            now_closed, left = connections.close_idle(ports, busy)
            closed |= now_closed
            if (not left and not self.calls.in_flight) or _left(deadline) <= 0:
                break
            await asyncio.sleep(min(RELEASE_POLL, _left(deadline)))
        log.info("drain: %d client connection(s) closed", len(closed))

    def _grpc_listening_ports(self) -> set[int]:
        if self.listeners is None:
            return set()
        return {p for p in (self.listeners.grpc_port, self.listeners.mtls_port) if p is not None}

    async def _stop_workers(self, deadline: float) -> None:
        """The hub (cancelled) and the outbox (closed), told to stop at the start of the drain,
        given what is left of its grace to end, then cut. A cancellation can be swallowed by a
        library's wait that completes at the same moment (asyncio.wait_for in Python 3.11): the
        hub's is made again until it ends."""
        pending = set(self._tasks)
        while pending and (left := _left(deadline)) > 0:
            _, pending = await asyncio.wait(pending, timeout=min(WORKER_RECANCEL, left))
            if self._hub_task is not None and self._hub_task in pending:
                self._hub_task.cancel()
        for task in pending:
            log.warning(
                "drain: %s still stopping at the end of the grace (at %s): cut",
                task.get_name(),
                _waiting_at(task),
            )
            task.cancel()

    async def _watch_store(self) -> None:
        """grpc.health.v1 says NOT_SERVING while the store does not answer, and SERVING again
        as soon as it does: a load balancer or client checking health sends calls elsewhere
        meanwhile. /readyz asks the store itself on each request."""
        serving = True
        while not self.draining:
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
        return admin_app(self)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """`task` cancelled, and waited for until it ends. A cancellation that arrives as a wait
    inside it completes is swallowed (asyncio.wait_for in Python 3.11): it is made again."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=WORKER_RECANCEL)
    if not task.cancelled() and task.exception() is not None:
        log.error("drain: %s failed", task.get_name(), exc_info=task.exception())
