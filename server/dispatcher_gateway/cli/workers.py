"""GATEWAY_WORKERS=N: the gateway as N worker processes, each a whole gateway (`serve --worker`)
on the same listeners and the same store, under this parent, which serves the admin port for
the set.

- Listeners: gRPC's port is shared with SO_REUSEPORT (grpc binds its own sockets), the kernel
  spreading connections over the workers. The webhook and JSON listeners are shared the same way
  by default (`REUSE_PORT`), or bound once here and inherited (`SHARED_SOCKET`): README,
  "Workers", says which balanced better and why the default. The parent binds each port first
  (port 0 resolved once, and a second gateway without workers refused the port).
- Store: each worker opens it. NATS: each is a client. SQLite: one writer at a time across
  processes (BEGIN IMMEDIATE, the busy timeout), and each commit of events wakes the other
  workers' tails (store/sqlite/wake.py). The outbox lease and the rate limit are in the store:
  shared already.
- Admin: /readyz is ready when every worker is; /metrics is every worker's page, each sample
  labelled `worker` (metrics.WorkerPages). Each worker serves its own on a loopback socket the
  parent bound.
- SIGTERM (or SIGINT): every worker drains as one gateway does, then the parent exits 0. A worker
  that dies otherwise is started again (after RESTART_DELAY, doubling while it keeps dying); a
  parent that dies takes its workers with it (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..admin import READY_CHECK_TIMEOUT
from ..app import DRAIN_GRACE
from ..config import Settings
from ..config_values import is_loopback, split_addr
from ..httpserver import SHUTDOWN_GRACE, bind, start_http
from ..metrics import render_workers
from ..workerslot import WorkerSlot

log = logging.getLogger("dispatcher_gateway.workers")

REUSE_PORT: Final = "reuseport"
SHARED_SOCKET: Final = "shared"
SHARING: Final = REUSE_PORT
"""How the webhook and JSON listeners are shared (gRPC's is always SO_REUSEPORT)."""
RESTART_DELAY: Final = 1.0
RESTART_DELAY_MAX: Final = 30.0
STABLE_AFTER: Final = 60.0
"""A worker that ran this long before it died is restarted after RESTART_DELAY again."""
STOP_TIMEOUT: Final = DRAIN_GRACE + SHUTDOWN_GRACE + 10.0
"""Seconds the workers get to drain on SIGTERM before they are killed (a worker's drain is
bounded well within: app.py's drain)."""
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class _Worker:
    index: int
    admin: socket.socket
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin.getsockname()[1]}"


@dataclass
class Supervisor:
    settings: Settings
    env: dict[str, str]
    sharing: str | None = None
    """SHARING when not given (read then: the benchmark sets it to compare)."""
    group: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(4)}")
    draining: bool = False
    _held: list[socket.socket] = field(default_factory=list)
    _inherited: dict[str, socket.socket] = field(default_factory=dict)
    _workers: list[_Worker] = field(default_factory=list)

    def _reserve(self, name: str, addr: str, *, shared: bool) -> str:
        """Bind `addr` here, so that its port is known (0 resolved) and kept: listening, for the
        workers to inherit (`shared`), or with SO_REUSEPORT and not listening, for the workers to
        bind beside it. Returns the address with its port."""
        host, port = split_addr(addr)
        sock = bind(host, port, reuse_port=not shared, listen=shared)
        self._held.append(sock)
        if shared:
            self._inherited[name] = sock
        bound = sock.getsockname()[1]
        return f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"

    def _worker_env(self) -> dict[str, str]:
        s = self.settings
        env = dict(self.env)
        env["GATEWAY_GRPC_ADDR"] = self._reserve("grpc", s.grpc_addr, shared=False)
        if s.grpc_client_ca_file is not None:
            env["GATEWAY_GRPC_MTLS_ADDR"] = self._reserve("mtls", s.grpc_mtls_addr, shared=False)
        shared = self.sharing == SHARED_SOCKET
        env["GATEWAY_WEBHOOK_ADDR"] = self._reserve("webhook", s.webhook_addr, shared=shared)
        if s.http_addr is not None:
            env["GATEWAY_HTTP_ADDR"] = self._reserve("http", s.http_addr, shared=shared)
        if s.console.addr is not None:
            # Any worker answers a page: the sessions' key is the store's, the feed every one's.
            env["GATEWAY_CONSOLE_ADDR"] = self._reserve("console", s.console.addr, shared=False)
        env.pop("GATEWAY_WORKERS", None)
        return env

    async def run(self, stop: asyncio.Event) -> int:
        self.sharing = self.sharing or SHARING
        admin_host, admin_port = split_addr(self.settings.admin_addr)
        admin = await start_http(self._admin_app(), admin_host, admin_port)
        try:
            env = self._worker_env()
            for index in range(self.settings.workers):
                self._workers.append(_Worker(index, bind("127.0.0.1", 0)))
            log.info(
                "starting %d workers: gRPC on %s, webhooks on %s (%s), admin on %s",
                len(self._workers),
                env["GATEWAY_GRPC_ADDR"],
                env["GATEWAY_WEBHOOK_ADDR"],
                self.sharing,
                admin.url,
            )
            watching = [asyncio.create_task(self._keep(w, env, stop)) for w in self._workers]
            await stop.wait()
            self.draining = True
            log.info("draining %d workers", len(self._workers))
            for worker in self._workers:
                _signal(worker, signal.SIGTERM)
            await asyncio.gather(*watching)
            return 0
        finally:
            for worker in self._workers:
                if worker.process is not None and worker.process.returncode is None:
                    _signal(worker, signal.SIGKILL)
                    await worker.process.wait()
            await admin.stop()
            for sock in [*self._held, *(w.admin for w in self._workers)]:
                sock.close()

    async def _keep(self, worker: _Worker, env: dict[str, str], stop: asyncio.Event) -> None:
        """Run the worker until the stop, again each time it dies before."""
        delay = RESTART_DELAY
        while True:
            worker.process = await self._spawn(worker, env)
            worker.started = time.monotonic()
            try:
                async with asyncio.timeout(None) as deadline:
                    waiting = asyncio.create_task(worker.process.wait())
                    stopping = asyncio.create_task(stop.wait())
                    await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
                    if not waiting.done():
                        # Stopping: SIGTERM is on its way (run()); the drain is bounded.
                        deadline.reschedule(asyncio.get_running_loop().time() + STOP_TIMEOUT)
                        await waiting
                    stopping.cancel()
            except TimeoutError:
                log.error(
                    "worker %d did not drain within %.0f s: killed", worker.index, STOP_TIMEOUT
                )
                _signal(worker, signal.SIGKILL)
                await worker.process.wait()
                return
            code = worker.process.returncode
            if stop.is_set():
                log.info("worker %d exited %s", worker.index, code)
                return
            lived = time.monotonic() - worker.started
            if lived > STABLE_AFTER:
                delay = RESTART_DELAY
            log.error(
                "worker %d (pid %d) exited %s after %.1f s; starting it again in %.0f s",
                worker.index,
                worker.process.pid,
                code,
                lived,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = min(delay * 2, RESTART_DELAY_MAX)
            worker.restarts += 1

    async def _spawn(self, worker: _Worker, env: dict[str, str]) -> asyncio.subprocess.Process:
        args = [
            "--worker",
            f"{self.group}/{worker.index}/{len(self._workers)}",
            "--admin-fd",
            str(worker.admin.fileno()),
        ]
        fds = [worker.admin.fileno()]
        for name, sock in self._inherited.items():
            args += [f"--{name}-fd", str(sock.fileno())]
            fds.append(sock.fileno())
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher_gateway",
            "serve",
            *args,
            env=env,
            pass_fds=fds,
            stdin=asyncio.subprocess.DEVNULL,
        )

    # The admin port of the set

    async def _ask(self, path: str) -> list[httpx.Response | None]:
        """GET `path` of every worker's admin listener; None for one that did not answer."""
        async with httpx.AsyncClient(timeout=READY_CHECK_TIMEOUT) as client:

            async def one(worker: _Worker) -> httpx.Response | None:
                try:
                    return await client.get(worker.admin_url + path)
                except httpx.HTTPError:
                    return None

            return list(await asyncio.gather(*(one(w) for w in self._workers)))

    def _admin_app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def readyz(request: Request) -> Response:
            peer = request.client.host if request.client else ""
            details = self.settings.readyz_details or is_loopback(peer)
            workers: list[dict[str, Any]] = []
            for worker, answer in zip(self._workers, await self._ask("/readyz"), strict=True):
                body: dict[str, Any] = {"ready": False, "store": "not answering"}
                if answer is not None:
                    with contextlib.suppress(ValueError):
                        body = answer.json()
                store = str(body.get("store", ""))
                if not details and store.startswith("unavailable"):
                    body["store"] = "unavailable"  # the store's own words: for operators
                workers.append({"worker": worker.index, "restarts": worker.restarts, **body})
            ready = bool(workers) and not self.draining and all(w["ready"] for w in workers)
            stores = [w["store"] for w in workers if w.get("store") != "ok"]
            circuits = [w["upstream_circuit"] for w in workers if "upstream_circuit" in w]
            body = {
                "ready": ready,
                "draining": self.draining or any(w.get("draining") for w in workers),
                "store": stores[0] if stores else "ok" if workers else "opening",
                "streams": sum(int(w.get("streams", 0)) for w in workers),
                "upstream_circuit": next(
                    (c for c in circuits if c.get("state") != "closed"),
                    circuits[0] if circuits else {},
                ),
                "workers": workers,
            }
            return JSONResponse(body, status_code=200 if ready else 503)

        async def metrics(request: Request) -> Response:
            answers = await self._ask("/metrics")
            pages = {
                str(worker.index): answer.text
                for worker, answer in zip(self._workers, answers, strict=True)
                if answer is not None and answer.status_code == 200
            }
            page, media_type = render_workers(pages, request.headers.get("accept", ""))
            return Response(page, media_type=media_type)

        return Starlette(
            routes=[
                Route("/healthz", healthz),
                Route("/readyz", readyz),
                Route("/metrics", metrics),
            ]
        )


def _signal(worker: _Worker, sig: signal.Signals) -> None:
    if worker.process is not None and worker.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(sig)


# In the worker


def worker_slot(args: argparse.Namespace) -> WorkerSlot | None:
    """This worker's place and inherited sockets, from the parent's arguments; None in a
    gateway that is not a worker. It dies with its parent."""
    if args.worker is None:
        return None
    group, index, count = args.worker.rsplit("/", 2)
    _die_with_parent(int(group.partition("-")[0]))

    def inherited(fd: int | None) -> socket.socket | None:
        return None if fd is None else socket.socket(fileno=fd)

    admin = inherited(args.admin_fd)
    if admin is None:
        raise SystemExit("--worker needs --admin-fd")
    return WorkerSlot(
        group,
        int(index),
        int(count),
        admin,
        webhook=inherited(args.webhook_fd),
        http=inherited(args.http_fd),
    )


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies, however it dies: the set is one gateway."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGKILL)
