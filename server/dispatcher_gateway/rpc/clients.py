"""The clients file: who may call the gateway, and what each one may do.

One line per client (`#` starts a comment):

    CLIENT CREDENTIAL... [services=SERVICE,...] [sync=true|false] [weight=N]

A CREDENTIAL is `sha256:HEX`, the SHA-256 of a bearer token (the file never holds a token:
`dispatcher-gateway token new CLIENT` makes one and prints its line), or `cert:IDENTITY`, a
client certificate whose URI or DNS subject alternative name, or else common name, is IDENTITY
(on the mTLS port). Two hashes on one line let a client move from one token to the next.
`services=` limits the client to those services (every one of a chain must be allowed);
`sync=false` to MODE_ASYNC. `weight=N` (1 to MAX_WEIGHT, by default 1) is the client's share of
the account's upstream rate against the other clients with jobs waiting (core/fairshare.py); a
caller not in the file (anonymous) has weight 1. A client, a token hash or a certificate
identity named twice is an error: the file is refused as a whole, never half applied.

The file is read again as soon as it changes (its inode, size or times), on the next call, so a
token is rotated without a restart. Replace it whole (write a new file and rename it over the
old one, as Kubernetes does with a mounted secret); a version that does not parse is logged
once and the last good one stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.model import Mode, Service

log = logging.getLogger("dispatcher_gateway.rpc")

SHA256 = "sha256:"
CERTIFICATE = "cert:"
TOKEN_PREFIX = "dgw_"  # noqa: S105 (a marker, not a secret)
"""Tokens the gateway makes start with this, so that secret scanners can find a leaked one."""
TOKEN_BYTES = 32
MAX_CLIENT_NAME = 128
MAX_WEIGHT = 1000
DEFAULT_WEIGHT = 1
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True, slots=True)
class Client:
    """A caller the gateway knows, and what it may do."""

    name: str
    services: frozenset[Service] | None = None
    """The services it may dispatch to; None: every one."""
    sync: bool = True
    """Whether it may dispatch with MODE_SYNC."""
    weight: int = DEFAULT_WEIGHT
    """Its share of the upstream rate against the other clients with jobs waiting."""

    def refusal(self, services: Iterable[Service], mode: Mode | None = None) -> str | None:
        """Why the client may not make this request, or None when it may."""
        if self.services is not None:
            denied = [s.value for s in services if s not in self.services]
            if denied:
                return f"client {self.name!r} may not use service {', '.join(denied)}"
        if mode is Mode.SYNC and not self.sync:
            return f"client {self.name!r} may not dispatch with MODE_SYNC (sync=false)"
        return None


@dataclass(frozen=True)
class ClientTable:
    by_token_hash: Mapping[str, Client] = field(default_factory=dict)
    by_certificate: Mapping[str, Client] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(set(self.by_token_hash.values()) | set(self.by_certificate.values()))

    def weight(self, name: str) -> int:
        """The client's weight; DEFAULT_WEIGHT for a name not in the table (anonymous)."""
        for client in (*self.by_token_hash.values(), *self.by_certificate.values()):
            if client.name == name:
                return client.weight
        return DEFAULT_WEIGHT


def hash_token(token: str) -> str:
    """The credential a bearer token is stored as. Unsalted on purpose: tokens are 256 random
    bits, so a table of guesses is hopeless, and the hash can be looked up directly."""
    return SHA256 + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def client_line(name: str, token: str, options: Iterable[str] = ()) -> str:
    return " ".join([name, hash_token(token), *options])


def parse_clients(text: str) -> ClientTable:
    """The table a clients file describes; ValueError naming the first bad line."""
    by_hash: dict[str, Client] = {}
    by_certificate: dict[str, Client] = {}
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            name, credentials, client = _parse_line(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if name in names:
            raise ValueError(f"line {number}: client {name!r} is listed twice")
        names.add(name)
        for credential in credentials:
            if credential.startswith(SHA256):
                if credential in by_hash:
                    other = by_hash[credential].name
                    raise ValueError(f"line {number}: the token hash of {other!r} is used again")
                by_hash[credential] = client
            else:
                identity = credential.removeprefix(CERTIFICATE)
                if identity in by_certificate:
                    other = by_certificate[identity].name
                    raise ValueError(
                        f"line {number}: certificate identity {identity!r} of {other!r} is "
                        "used again"
                    )
                by_certificate[identity] = client
    return ClientTable(by_hash, by_certificate)


def _parse_line(line: str) -> tuple[str, list[str], Client]:
    name, *words = line.split()
    if len(name) > MAX_CLIENT_NAME or not _NAME.fullmatch(name):
        raise ValueError(
            f"bad client name (letters, digits and ._:/@+-, at most {MAX_CLIENT_NAME})"
        )
    credentials: list[str] = []
    services: frozenset[Service] | None = None
    sync = True
    weight = DEFAULT_WEIGHT
    for word in words:
        if word.startswith(SHA256):
            digest = word.removeprefix(SHA256)
            if not _HEX_DIGEST.fullmatch(digest):
                raise ValueError("sha256: must be followed by 64 lowercase hex digits")
            credentials.append(word)
        elif word.startswith(CERTIFICATE):
            if word == CERTIFICATE:
                raise ValueError("cert: must be followed by the certificate's identity")
            credentials.append(word)
        elif word.startswith("services="):
            services = _services(word.removeprefix("services="))
        elif word.startswith("sync="):
            value = word.removeprefix("sync=").lower()
            if value not in _BOOLEANS:
                raise ValueError(f"sync= takes true or false, got {value!r}")
            sync = _BOOLEANS[value]
        elif word.startswith("weight="):
            value = word.removeprefix("weight=")
            if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_WEIGHT):
                raise ValueError(f"weight= takes a whole number from 1 to {MAX_WEIGHT}")
            weight = int(value)
        else:
            # Never echo the word: it may be a token pasted by mistake.
            raise ValueError(
                f"expected sha256:HEX, cert:IDENTITY, services=, sync= or weight= after {name!r} "
                "(plain tokens are not accepted: `dispatcher-gateway token hash` prints a token's "
                "line)"
            )
    if not credentials:
        # Not named: a line of one word may be a token pasted in place of its line.
        raise ValueError(
            "the client has no credential (sha256:HEX or cert:IDENTITY; plain tokens are not "
            "accepted: `dispatcher-gateway token hash` prints a token's line)"
        )
    return name, credentials, Client(name, services, sync, weight)


def _services(text: str) -> frozenset[Service]:
    known = {s.value for s in Service}
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"services= takes a comma-separated list of {', '.join(sorted(known))}; got {text!r}"
        )
    return frozenset(Service(n) for n in names)


def load_clients(path: str | Path) -> ClientTable:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from None
    return parse_clients(text)


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ClientsFile:
    """The clients file, read again when it changes; the last good version while a new one
    does not parse."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._seen = _signature(self.path)
        self.table = load_clients(self.path)

    def current(self) -> ClientTable:
        # One stat per call (about a microsecond): a rotated token works on the very next call.
        signature = _signature(self.path)
        if signature != self._seen:
            self._seen = signature
            self._reload()
        return self.table

    def weight(self, name: str) -> float:
        """The client's weight in the share of the upstream rate, as the file says now."""
        return self.current().weight(name)

    def _reload(self) -> None:
        try:
            table = load_clients(self.path)
        except ValueError as exc:
            log.error(
                "clients file %s: %s; keeping the previous version (%d clients)",
                self.path,
                exc,
                len(self.table),
            )
            return
        self.table = table
        log.info("clients file %s reloaded: %d clients", self.path, len(table))
