"""What every client command shares: its options (--target, --token, TLS), its channel to the
gateway with the metadata its calls carry, and how a refused call is told."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

from ..config import Settings
from ..config_values import is_loopback, split_addr


def on_loopback(addr: str) -> str:
    """The same port as `addr`, on this machine only."""
    return f"127.0.0.1:{split_addr(addr)[1]}"


DEFAULT_TARGET = on_loopback(Settings.grpc_addr)
"""Where a gateway started on this machine with the default settings (or `make run`) listens."""
TOKEN_ENV = "DISPATCHER_GATEWAY_TOKEN"  # noqa: S105 (a variable's name)
"""Where client commands find their bearer token when --token is not given (an argument is
visible to every user of the machine in the process list; the environment is not)."""


def add_client_command(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that calls the gateway, with the options every such command takes."""
    command: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    command.add_argument("--target", default=DEFAULT_TARGET, help="the gateway's gRPC address")
    command.add_argument("--json", action="store_true", help="print JSON lines")
    command.add_argument("--token", default="", help=f"bearer token (better: set {TOKEN_ENV})")
    command.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    command.add_argument("--ca", help="TLS, trusting this CA file")
    command.add_argument("--cert", help="client certificate file (mTLS), with --key")
    command.add_argument("--key", help="the client certificate's key file")
    return command


class Connection:
    """A client command's channel to the gateway, and the metadata its calls carry."""

    def __init__(self, args: argparse.Namespace) -> None:
        token = args.token or os.environ.get(TOKEN_ENV, "")
        if bool(args.cert) != bool(args.key):
            raise SystemExit("--cert and --key go together")
        tls = bool(args.tls or args.ca or args.cert)
        host = args.target.rpartition(":")[0].strip("[]")
        if token and not tls and not is_loopback(host):
            raise SystemExit(
                f"refusing to send a bearer token in clear to {args.target}: add --tls or --ca"
            )
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(args.ca),
                private_key=_read(args.key),
                certificate_chain=_read(args.cert),
            )
            self.channel = grpc.aio.secure_channel(args.target, credentials)
        else:
            self.channel = grpc.aio.insecure_channel(args.target)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.channel.close()

    @property
    def stub(self) -> pb_grpc.DispatchServiceAsyncStub:
        return pb_grpc.DispatchServiceStub(self.channel)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc.strerror}") from None


def refused(exc: grpc.aio.AioRpcError) -> int:
    """The exit status of a command whose call the gateway refused, once it said why."""
    print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1
