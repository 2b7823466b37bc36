"""`dispatcher-gateway templates`: the account's templates, as the upstream lists them."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb

from .connection import Connection, add_client_command, refused
from .output import template_line

TIMEOUT = 30.0
"""Seconds the call may take: the gateway asks the upstream."""


def add_command(commands: Any) -> None:
    add_client_command(commands, "templates", "list the account's templates").set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    async with Connection(args) as connection:
        try:
            answer = await connection.stub.ListTemplates(
                pb.ListTemplatesRequest(), timeout=TIMEOUT, metadata=connection.metadata
            )
        except grpc.aio.AioRpcError as exc:
            return refused(exc)
        for template in answer.templates:
            print(template_line(template))
    return 0
