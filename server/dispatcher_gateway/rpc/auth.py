"""Who is calling. Every job belongs to a client; callers only ever see their own jobs.

A caller is known by a bearer token (`authorization: Bearer TOKEN`, its hash listed in the
clients file) or, on the mTLS port, by its client certificate (listed in the clients file as
`cert:IDENTITY`; without a clients file, the certificate's first URI or DNS name, else its
common name, is the client's name). A call with neither is refused, unless anonymous access is
switched on (GATEWAY_ALLOW_ANONYMOUS): then it is the client `anonymous`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping, Sequence

import grpc

from ..core.errors import GatewayError
from ..core.model import Mode, Service
from .clients import Client, ClientsFile, hash_token

ANONYMOUS = "anonymous"
MAX_AUTHORIZATION = 1024
"""Characters of an authorization header looked at; longer is no token of ours."""

# Properties of a verified client certificate in a call's auth context (grpc core's names).
_URI_SANS, _DNS_SANS, _COMMON_NAME = "peer_uri", "peer_dns", "x509_common_name"

_caller: contextvars.ContextVar[Client] = contextvars.ContextVar("caller")


class Unauthenticated(GatewayError):
    pass


class PermissionDenied(GatewayError):
    pass


def caller() -> Client:
    """The client of the call being handled, as the CallGuard interceptor authenticated it."""
    return _caller.get()


def set_caller(client: Client) -> contextvars.Token[Client]:
    return _caller.set(client)


def reset_caller(token: contextvars.Token[Client]) -> None:
    _caller.reset(token)


def authorize(client: Client, services: Iterable[Service], mode: Mode | None = None) -> None:
    """PermissionDenied naming what the client may not do, if anything (the clients file's
    `services=` and `sync=`)."""
    refusal = client.refusal(services, mode)
    if refusal is not None:
        raise PermissionDenied(refusal)


def certificate_identities(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The names a verified client certificate gives: URI SANs, DNS SANs, then the CN."""
    names: list[str] = []
    for key in (_URI_SANS, _DNS_SANS, _COMMON_NAME):
        for value in auth_context.get(key, ()):
            name = value.decode(errors="replace")
            if name and name not in names:
                names.append(name)
    return names


def bearer_token(metadata: grpc.aio.Metadata | Sequence[tuple[str, object]] | None) -> str:
    """The bearer token of the call's metadata; "" when there is none."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value[:MAX_AUTHORIZATION].partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization header is not 'Bearer TOKEN'")
            return token.strip()
    return ""


class Authenticator:
    def __init__(
        self, clients: ClientsFile | None = None, *, allow_anonymous: bool = False
    ) -> None:
        """`clients`: the clients file (None: no bearer tokens, certificate clients named by
        their certificates); `allow_anonymous`: a call without credentials is `anonymous`."""
        self.clients = clients
        self.allow_anonymous = allow_anonymous

    def client(
        self,
        metadata: grpc.aio.Metadata | Sequence[tuple[str, object]] | None,
        auth_context: Mapping[str, Iterable[bytes]] | None = None,
    ) -> Client:
        table = self.clients.current() if self.clients is not None else None
        by_certificate = None
        identities = certificate_identities(auth_context or {})
        if identities:
            if table is None:
                by_certificate = Client(identities[0])
            else:
                found = {table.by_certificate[i] for i in identities if i in table.by_certificate}
                if len(found) > 1:
                    raise Unauthenticated("the client certificate names more than one client")
                if not found:
                    raise Unauthenticated("the client certificate is not in the clients file")
                (by_certificate,) = found
        by_token = None
        token = bearer_token(metadata)
        if token:
            if table is None:
                raise Unauthenticated("this gateway takes no bearer tokens")
            # A lookup by the token's hash: its timing tells an attacker about hashes of their
            # guesses, which says nothing about any token.
            by_token = table.by_token_hash.get(hash_token(token))
            if by_token is None:
                raise Unauthenticated("unknown bearer token")
        if by_certificate is not None and by_token is not None and by_certificate != by_token:
            raise Unauthenticated(
                "the client certificate and the bearer token name different clients"
            )
        found_client = by_certificate or by_token
        if found_client is not None:
            return found_client
        if self.allow_anonymous:
            return Client(ANONYMOUS)
        raise Unauthenticated(
            "no credentials: send 'authorization: Bearer TOKEN' or a client certificate"
        )
