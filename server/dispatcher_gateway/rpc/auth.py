"""Who is calling. Every job belongs to a client; callers only ever see their own jobs.

Without a token file every caller is the client `anonymous`. With one (lines `CLIENT TOKEN`),
each call must carry `authorization: Bearer TOKEN` and is that client.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path

import grpc

ANONYMOUS = "anonymous"


class Unauthenticated(Exception):
    pass


class Authenticator:
    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        """`tokens` maps a bearer token to its client's name; None lets everyone in as anonymous."""
        self._tokens = dict(tokens) if tokens is not None else None

    @classmethod
    def from_file(cls, path: str | Path) -> Authenticator:
        tokens: dict[str, str] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'CLIENT TOKEN'")
            client, token = parts
            tokens[token] = client
        return cls(tokens)

    def client(self, metadata: grpc.aio.Metadata | None) -> str:
        if self._tokens is None:
            return ANONYMOUS
        presented = ""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, presented = value.partition(" ")
                if scheme.lower() != "bearer":
                    presented = ""
        # Compare against every token, so the time taken says nothing about which one was close.
        found = ""
        for token, client in self._tokens.items():
            if presented and hmac.compare_digest(token.encode(), presented.encode()):
                found = client
        if not found:
            raise Unauthenticated("missing or unknown bearer token")
        return found
