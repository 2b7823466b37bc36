"""`dispatcher-gateway sandbox`: the sandbox alone, a local stand-in of the Dispatcher API."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

from ..sandbox import SandboxSettings
from .logs import configure_logging
from .serve import stop_on_signals

SANDBOX_PORT = 8080


def add_command(commands: Any) -> None:
    sandbox = commands.add_parser("sandbox", help="run the sandbox alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=SANDBOX_PORT)
    sandbox.add_argument("--email", default=SandboxSettings.email)
    sandbox.add_argument("--callback-ca", help="CA file to verify the HTTPS callbacks with")
    sandbox.add_argument(
        "--sync-delay",
        type=float,
        default=SandboxSettings.sync_delay,
        help="seconds a sync answer takes (the least)",
    )
    sandbox.add_argument(
        "--sync-delay-max",
        type=float,
        help="with it, each sync answer takes a random time between --sync-delay and this",
    )
    sandbox.add_argument(
        "--time-factor",
        type=float,
        default=SandboxSettings.time_factor,
        help="scales webhook retries",
    )
    sandbox.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    from ..sandbox import serve_sandbox

    configure_logging("INFO")
    password = os.environ.get("SANDBOX_PASSWORD") or secrets.token_urlsafe(16)
    secret = os.environ.get("SANDBOX_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
    try:
        settings = SandboxSettings(
            email=args.email,
            password=password,
            webhook_secrets=(secret,),
            callback_ca=args.callback_ca,
            sync_delay=args.sync_delay,
            sync_delay_max=args.sync_delay_max,
            time_factor=args.time_factor,
        )
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    sandbox, server = await serve_sandbox(settings, args.host, args.port)
    print(f"sandbox on {server.url} (user {args.email})", flush=True)
    if "SANDBOX_PASSWORD" not in os.environ:
        print(
            "password and webhook secret: set SANDBOX_PASSWORD / SANDBOX_WEBHOOK_SECRET to choose"
        )
    stop = stop_on_signals()
    await stop.wait()
    await sandbox.close()
    await server.stop()
    return 0
