"""`dispatcher-gateway serve [--sandbox]`: the gateway, configured from the environment; with
--sandbox (`make run`), the sandbox too, in the same process, and the gateway pointed at it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from ..config import HTTP_PORT, ConfigError, Settings
from ..sandbox import SandboxSettings
from .connection import on_loopback
from .logs import configure_logging

SANDBOX_TLS_DIR = Path("data/sandbox-tls")
SANDBOX_EVENT_DELAY = 0.5
"""Seconds before the sandbox sends a dispatch's first webhook."""
GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (CPython's default: 700). Each
webhook or call allocates hundreds of objects, nearly all freed by reference counting: at the
default, the collector ran every few requests."""


def add_command(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the gateway (configured from the environment)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="also run the sandbox in this process and point the gateway at it",
    )
    serve.add_argument(
        "--sandbox-event-delay",
        type=float,
        default=SANDBOX_EVENT_DELAY,
        help=f"seconds before the sandbox sends a dispatch's first webhook "
        f"(default {SANDBOX_EVENT_DELAY})",
    )
    # How cli/workers.py starts a worker (GATEWAY_WORKERS): not for people.
    serve.add_argument("--worker", help=argparse.SUPPRESS)
    for name in ("admin", "webhook", "http"):
        serve.add_argument(f"--{name}-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(run=run)


def settle_heap() -> None:
    """Once started: what the start made (modules, the app) lives as long as the process, so it
    is moved out of the collector's sight (gc.freeze), which would otherwise walk it again at
    each older-generation collection; and the youngest generation is collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def stop_on_signals() -> asyncio.Event:
    """Set on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def sandbox_tls() -> tuple[str, str, str]:
    """A local CA and a certificate for 127.0.0.1/localhost, made once under data/: the sandbox
    calls the gateway's webhook over real HTTPS and trusts this CA."""
    ca_file, cert_file, key_file = (
        SANDBOX_TLS_DIR / "ca.pem",
        SANDBOX_TLS_DIR / "webhook.pem",
        SANDBOX_TLS_DIR / "webhook-key.pem",
    )
    if not (ca_file.exists() and cert_file.exists() and key_file.exists()):
        try:
            import trustme
        except ImportError:
            sys.exit("--sandbox needs the test extras: pip install 'dispatcher-gateway[test]'")
        SANDBOX_TLS_DIR.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="dispatcher-gateway sandbox")
        leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca.cert_pem.write_to_path(str(ca_file))
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))
        leaf.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
    return str(ca_file), str(cert_file), str(key_file)


async def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    sandbox = None
    if args.sandbox:
        from ..sandbox import serve_sandbox

        ca_file, cert_file, key_file = sandbox_tls()
        password, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        sandbox_settings = SandboxSettings(
            password=password,
            webhook_secrets=(secret,),
            callback_ca=ca_file,
            event_delay=args.sandbox_event_delay,
        )
        sandbox, sandbox_server = await serve_sandbox(sandbox_settings, "127.0.0.1", 0)
        webhook_addr = env.get("GATEWAY_WEBHOOK_ADDR", on_loopback(Settings.webhook_addr))
        webhook_port = webhook_addr.rpartition(":")[2]
        defaults = {
            "DISPATCHER_BASE_URL": sandbox_server.url,
            "DISPATCHER_EMAIL": sandbox_settings.email,
            "DISPATCHER_PASSWORD": password,
            "DISPATCHER_WEBHOOK_SECRET": secret,
            "GATEWAY_PUBLIC_URL": f"https://127.0.0.1:{webhook_port}",
            "GATEWAY_GRPC_ADDR": on_loopback(Settings.grpc_addr),
            "GATEWAY_WEBHOOK_ADDR": webhook_addr,
            "GATEWAY_ADMIN_ADDR": on_loopback(Settings.admin_addr),
            "GATEWAY_HTTP_ADDR": f"127.0.0.1:{HTTP_PORT}",
            "GATEWAY_TLS_CERT_FILE": cert_file,
            "GATEWAY_TLS_KEY_FILE": key_file,
            # For trying the gateway out on this machine: said in the banner below.
            "GATEWAY_ALLOW_ANONYMOUS": "true",
            "GATEWAY_GRPC_REFLECTION": "true",
            # The console, where GATEWAY_CONSOLE_ADDR turns it on (`make run` does): no login,
            # on loopback, unless an operators file is given.
            "GATEWAY_CONSOLE_AUTH": str("GATEWAY_CONSOLE_OPERATORS_FILE" in env).lower(),
        }
        # The sandbox's credentials are made for this run; the rest can be overridden.
        env = {**defaults, **{k: v for k, v in env.items() if not k.startswith("DISPATCHER_")}}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    from .workers import Supervisor, worker_slot

    worker = worker_slot(args)
    configure_logging(
        settings.log_level, settings.log_format, worker.index if worker is not None else None
    )
    if worker is None and settings.workers > 1:
        supervisor = Supervisor(settings, env)
        code = await supervisor.run(stop_on_signals())
        if sandbox is not None:
            await sandbox.close()
            await sandbox_server.stop()
        return code

    from ..app import GatewayApp
    from ..tracing import ConfigError as TracingConfigError
    from ..tracing import Tracing

    try:
        # The SDK reads OTEL_* from the process's environment, as every OpenTelemetry SDK does.
        tracing = Tracing.from_env(os.environ)
    except TracingConfigError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 2
    app = GatewayApp(settings, tracing=tracing, worker=worker)
    stop = stop_on_signals()
    # A store that is not ready yet is waited for; a SIGTERM meanwhile ends the wait.
    starting = asyncio.create_task(app.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        if sandbox is not None:
            await sandbox.close()
            await sandbox_server.stop()
        return 0
    listeners = starting.result()
    settle_heap()
    if sandbox is not None and worker is None:
        transport = "TLS" if settings.grpc_tls_cert_file else "plaintext"
        reflection = "reflection on" if settings.grpc_reflection else "reflection off"
        access = (
            "ANONYMOUS ACCESS ON: a caller without credentials is the client 'anonymous'"
            if settings.allow_anonymous
            else "callers must authenticate"
        )
        print(
            f"\ndispatcher-gateway is running in sandbox mode (store: {settings.store}).\n"
            f"  gRPC       {settings.grpc_addr.replace('0.0.0.0', '127.0.0.1')}  "
            f"(dispatcher.gateway.v1.DispatchService, {transport}, {reflection})\n"
            f"  access     {access}\n"
            + (
                f"  JSON/HTTP  {listeners.http.url}/dispatcher.gateway.v1.DispatchService/METHOD  "
                "(the same service as JSON; streams as Server-Sent Events)\n"
                if listeners.http is not None
                else ""
            )
            + (
                f"  console    {listeners.console.url}/  (operators' console"
                + (", no login)\n" if not settings.console.auth else ")\n")
                if listeners.console is not None
                else ""
            )
            + f"  webhooks   {listeners.webhook.url}/webhooks/dispatcher/{{token}}\n"
            f"  admin      {listeners.admin.url}/readyz\n"
            f"  sandbox    {sandbox_server.url}  (stats: {sandbox_server.url}/_sandbox/stats)\n\n"
            "In another terminal:\n"
            "  .venv/bin/dispatcher-gateway dispatch --service email --to ada@example.com "
            "--subject Hello --template 1 --watch\n"
            "  .venv/bin/dispatcher-gateway watch\n",
            flush=True,
        )
    await stopping
    await app.drain()
    if sandbox is not None:
        await sandbox.close()
        await sandbox_server.stop()
    return 0
