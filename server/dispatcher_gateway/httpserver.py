"""Run an ASGI app with uvicorn as a task on the running event loop, on a socket bound first, so
that port 0 works and the caller learns the real port before the first request.

TLS is set up here, not by uvicorn: AEAD suites only, TLS 1.2 and later, and a handshake timeout,
which uvicorn does not pass to asyncio (whose default is 60 s). Each request is held to the
listener's `Limits` (httplimits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from .httplimits import LimitedProtocol, Limits

SHUTDOWN_GRACE = 5
"""Seconds in-flight requests get to finish when a server stops."""
IDLE_CHECK_AFTER = 0.25
LISTEN_BACKLOG = 1024
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites: forward-secret key exchange with an AEAD cipher, no CBC (uvicorn's default,
"TLSv1", allows CBC suites). TLS 1.3's own suites are all AEAD."""


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """The listeners' TLS: 1.2 or later, AEAD suites only, no renegotiation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certfile, keyfile)
    return context


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers (the process that embeds it owns SIGTERM and SIGINT),
    serving bound sockets with a TLS context and handshake timeout of ours."""

    def __init__(
        self, config: uvicorn.Config, *, tls: ssl.SSLContext | None, handshake_timeout: float
    ) -> None:
        super().__init__(config)
        self.tls = tls
        self.handshake_timeout = handshake_timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's own startup for sockets given, but for `ssl_handshake_timeout`, which it
        does not pass to `create_server`: without it a peer that never finishes (or starts) its
        handshake holds a connection for asyncio's 60 s."""
        if not sockets:
            raise ValueError("serve() needs the bound sockets")
        await self.lifespan.startup()
        config = self.config
        protocol = config.http_protocol_class

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return protocol(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        handshake_timeout = self.handshake_timeout if self.tls is not None else None
        self.servers = [
            await loop.create_server(
                create_protocol,
                sock=sock,
                ssl=self.tls,
                backlog=config.backlog,
                ssl_handshake_timeout=handshake_timeout,
            )
            for sock in sockets
        ]
        self.started = True


@dataclass
class HttpServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    sock: socket.socket
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, then drop idle keep-alive connections
        at once: uvicorn would otherwise wait for them, and an idle TLS peer may never answer
        the close."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        self.server.should_exit = True
        try:
            while not self.task.done():
                elapsed = loop.time() - asked
                if elapsed > SHUTDOWN_GRACE:
                    raise TimeoutError
                # Past uvicorn's shutdown step (one main-loop tick and its 0.1 s pause), no
                # request in flight means only idle connections are left.
                if elapsed > IDLE_CHECK_AFTER and not self.server.server_state.tasks:
                    self.server.force_exit = True
                await asyncio.wait({self.task}, timeout=0.05)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        finally:
            self.sock.close()


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port, listening unless told not to. `reuse_port`: the port is
    shared with other sockets that set it too (the workers of one gateway)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on connections accepted from a
    # socket whose proto is TCP, and without it Nagle holds uvicorn's response body (a second
    # small write) until the client's delayed ACK, on every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def start_http(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    access_log: bool = False,
    limits: Limits | None = None,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
) -> HttpServer:
    """Serve `app` on host:port (0 = any free port), HTTPS when a certificate is given, each
    connection held to `limits` (default: `Limits()`). `sock`: a listening socket to serve
    instead (one a parent process bound); `reuse_port`: see `bind`."""
    limits = limits or Limits()
    tls = tls_context(certfile, keyfile) if certfile else None
    if sock is None:
        sock = bind(host, port, reuse_port=reuse_port)
    else:
        sock.setblocking(False)
        host = sock.getsockname()[0]
    config = uvicorn.Config(
        app,
        access_log=access_log,
        # The C parser (a dependency), not the pure-Python h11, which holds the GIL while it
        # parses, under webhook load too. With the limits uvicorn's httptools protocol lacks.
        http=LimitedProtocol.holding_to(limits),
        ws="none",
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        server_header=False,
    )
    server = _Server(config, tls=tls, handshake_timeout=limits.tls_handshake_timeout)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http:{host}:{port}")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("HTTP server stopped before it started")
        await asyncio.sleep(0.01)
    bound_port = sock.getsockname()[1]
    return HttpServer(server, task, sock, host, bound_port, tls is not None)
