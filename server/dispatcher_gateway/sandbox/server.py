"""The sandbox on a real HTTP(S) server.

The one thing the sandbox takes from the gateway: httpserver.py, which runs an ASGI app with
uvicorn on a socket bound first (so port 0 works) and knows nothing of either."""

from __future__ import annotations

from ..httpserver import HttpServer, start_http
from .app import Sandbox
from .settings import SandboxSettings


async def serve_sandbox(
    settings: SandboxSettings,
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> tuple[Sandbox, HttpServer]:
    """The sandbox on a real HTTP(S) server (port 0 = any free port). Stop it with
    `await sandbox.close()` then `await server.stop()`."""
    sandbox = Sandbox(settings)
    try:
        server = await start_http(sandbox.app, host, port, certfile=certfile, keyfile=keyfile)
    except BaseException:
        await sandbox.close()
        raise
    return sandbox, server
