"""rpc/auth.Authenticator: a caller is its bearer token's client, or its verified client
certificate's; nobody is anonymous unless that is switched on."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher_gateway.core.model import Mode, Service
from dispatcher_gateway.rpc.auth import (
    ANONYMOUS,
    Authenticator,
    PermissionDenied,
    Unauthenticated,
    authorize,
    certificate_identities,
)
from dispatcher_gateway.rpc.clients import Client, ClientsFile, hash_token

TOKEN = "dgw_billing-token"


def bearer(token: str) -> list[tuple[str, object]]:
    return [("authorization", f"Bearer {token}")]


def certificate(*, uri: str = "", dns: str = "", cn: str = "") -> dict[str, list[bytes]]:
    """An auth context as grpc gives it for a verified client certificate."""
    context: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    if uri:
        context["peer_uri"] = [uri.encode()]
    if dns:
        context["peer_dns"] = [dns.encode()]
    if cn:
        context["x509_common_name"] = [cn.encode()]
    return context


@pytest.fixture
def clients(tmp_path: Path) -> ClientsFile:
    path = tmp_path / "clients"
    path.write_text(
        f"billing {hash_token(TOKEN)} cert:spiffe://corp.example/billing services=email\n"
        "reports cert:reports.internal\n"
    )
    return ClientsFile(path)


def test_nobody_without_credentials_unless_anonymous_is_switched_on(clients: ClientsFile) -> None:
    for auth in (Authenticator(clients), Authenticator()):
        with pytest.raises(Unauthenticated, match="no credentials"):
            auth.client([])
    assert Authenticator(allow_anonymous=True).client([]) == Client(ANONYMOUS)
    assert Authenticator(clients, allow_anonymous=True).client([]) == Client(ANONYMOUS)


def test_a_token_is_its_clients(clients: ClientsFile) -> None:
    auth = Authenticator(clients)
    assert auth.client(bearer(TOKEN)).name == "billing"
    assert auth.client([("authorization", f"bearer  {TOKEN} ")]).name == "billing"


@pytest.mark.parametrize(
    "metadata",
    [
        bearer("dgw_not-a-token"),
        [("authorization", f"Basic {TOKEN}")],
        [("authorization", "Bearer")],
        bearer(TOKEN + "x" * 5000),
    ],
    ids=["unknown", "not-bearer", "empty", "huge"],
)
def test_a_bad_token_is_refused_even_when_anonymous_is_on(
    clients: ClientsFile, metadata: list[tuple[str, object]]
) -> None:
    with pytest.raises(Unauthenticated) as info:
        Authenticator(clients, allow_anonymous=True).client(metadata)
    assert TOKEN not in str(info.value)


def test_a_token_without_a_clients_file_is_refused() -> None:
    with pytest.raises(Unauthenticated, match="takes no bearer tokens"):
        Authenticator(allow_anonymous=True).client(bearer(TOKEN))


@pytest.mark.parametrize(
    ("context", "name"),
    [
        (certificate(uri="spiffe://corp.example/billing", dns="x.example", cn="x"), "billing"),
        (certificate(dns="reports.internal", cn="ignored"), "reports"),
        (certificate(cn="reports.internal"), "reports"),
    ],
)
def test_a_certificate_is_the_client_the_file_maps_it_to(
    clients: ClientsFile, context: dict[str, list[bytes]], name: str
) -> None:
    assert Authenticator(clients).client([], context).name == name


def test_a_certificate_the_file_does_not_list_is_refused(clients: ClientsFile) -> None:
    with pytest.raises(Unauthenticated, match="not in the clients file"):
        Authenticator(clients, allow_anonymous=True).client([], certificate(dns="other.example"))


def test_without_a_clients_file_a_certificate_names_its_client() -> None:
    auth = Authenticator()
    assert auth.client([], certificate(uri="spiffe://a/b", dns="b.example", cn="b")).name == (
        "spiffe://a/b"
    )
    assert auth.client([], certificate(dns="b.example", cn="b")).name == "b.example"
    assert auth.client([], certificate(cn="b")).name == "b"


def test_a_certificate_and_a_token_must_name_the_same_client(clients: ClientsFile) -> None:
    auth = Authenticator(clients)
    billing = certificate(uri="spiffe://corp.example/billing")
    assert auth.client(bearer(TOKEN), billing).name == "billing"
    with pytest.raises(Unauthenticated, match="name different clients"):
        auth.client(bearer(TOKEN), certificate(dns="reports.internal"))


def test_a_certificate_naming_two_clients_is_refused(clients: ClientsFile) -> None:
    both = certificate(uri="spiffe://corp.example/billing", dns="reports.internal")
    with pytest.raises(Unauthenticated, match="more than one client"):
        Authenticator(clients).client([], both)


def test_certificate_identities_in_order_without_repeats() -> None:
    context = {
        "peer_uri": [b"spiffe://a/b"],
        "peer_dns": [b"b.example", b"c.example"],
        "x509_common_name": [b"b.example"],
        "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"],
    }
    assert certificate_identities(context) == ["spiffe://a/b", "b.example", "c.example"]
    assert certificate_identities({"transport_security_type": [b"ssl"]}) == []


def test_authorize_names_what_is_not_allowed() -> None:
    billing = Client("billing", frozenset({Service.EMAIL}), sync=False)
    authorize(billing, [Service.EMAIL], Mode.ASYNC)
    with pytest.raises(PermissionDenied, match="may not use service sms"):
        authorize(billing, [Service.EMAIL, Service.SMS])
    with pytest.raises(PermissionDenied, match="MODE_SYNC"):
        authorize(billing, [Service.EMAIL], Mode.SYNC)
