"""`dispatcher-gateway token new|hash CLIENT`: a client's bearer token and its line for the
clients file, or the line of a token given on standard input."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..rpc.clients import MAX_WEIGHT, client_line, new_token


def add_command(commands: Any) -> None:
    token = commands.add_parser(
        "token", help="make a client's bearer token, or hash one, for the clients file"
    )
    token.add_argument(
        "action",
        choices=["new", "hash"],
        help="new: make a random token; hash: the line for a token read from standard input",
    )
    token.add_argument("client", help="the client's name")
    token.add_argument("--services", help="only these services, such as email,sms")
    token.add_argument(
        "--no-sync", dest="sync", action="store_false", help="MODE_ASYNC only (sync=false)"
    )
    token.add_argument(
        "--weight",
        type=_weight,
        help=f"the client's share of the upstream rate, 1 to {MAX_WEIGHT} (weight=, default 1)",
    )
    token.set_defaults(run=run)


def _weight(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_WEIGHT):
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_WEIGHT}")
    return int(text)


async def run(args: argparse.Namespace) -> int:
    options = []
    if args.services:
        options.append(f"services={args.services}")
    if not args.sync:
        options.append("sync=false")
    if args.weight is not None:
        options.append(f"weight={args.weight}")
    if args.action == "new":
        token = new_token()
        line = client_line(args.client, token, options)
        print(
            f"token for {args.client} (give it to them; the gateway keeps only its hash):\n"
            f"  {token}\n"
            "line for GATEWAY_CLIENT_TOKENS_FILE:\n"
            f"  {line}"
        )
        return 0
    token = sys.stdin.readline().strip()
    if not token:
        print("token hash: give the token on standard input", file=sys.stderr)
        return 2
    print(client_line(args.client, token, options))
    return 0
