"""The argument parser of every command, and the entry point that runs the one named."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from . import batch, dispatch, jobs, sandbox, serve, templates, token, watch

DESCRIPTION = (
    "dispatcher-gateway serve | sandbox | dispatch | dispatch-batch | watch | jobs | templates | "
    "token"
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher-gateway", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (serve, sandbox, dispatch, batch, watch, jobs, templates, token):
        command.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Ctrl-C ends every command, even one started with SIGINT ignored, as a shell without job
    # control starts its background commands (`sh -c 'make test &'`): Python keeps an inherited
    # SIG_IGN, and asyncio.run then leaves SIGINT alone, so `watch` would never stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(asyncio.run(args.run(args)))
    except KeyboardInterrupt:
        return 130
