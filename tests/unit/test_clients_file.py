"""rpc/clients: the clients file (token hashes, certificate identities, what each client may
do), refused whole when it lists anything twice, and read again when it changes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from dispatcher_gateway.core.model import Mode, Service
from dispatcher_gateway.rpc.clients import (
    Client,
    ClientsFile,
    client_line,
    hash_token,
    load_clients,
    new_token,
    parse_clients,
)

ALICE, BOB = "dgw_alice-token", "dgw_bob-token"


def replace(path: Path, text: str) -> None:
    """As a deployment rotates a file: a new one renamed over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_a_line_names_a_client_by_the_hash_of_its_token() -> None:
    table = parse_clients(f"# who\nalice {hash_token(ALICE)}  # the billing service\n")
    assert table.by_token_hash[hash_token(ALICE)] == Client("alice")
    assert ALICE not in str(table)


def test_new_tokens_are_random_marked_and_hashed_in_their_line() -> None:
    token = new_token()
    assert token.startswith("dgw_")
    assert len(token) > 40
    assert token != new_token()
    line = client_line("billing", token, ["sync=false"])
    assert line == f"billing {hash_token(token)} sync=false"
    assert token not in line


def test_services_sync_and_certificates() -> None:
    table = parse_clients(
        f"billing {hash_token(ALICE)} cert:spiffe://corp.example/billing "
        "services=email,SMS sync=false\n"
        "reports cert:reports.internal\n"
    )
    billing = table.by_certificate["spiffe://corp.example/billing"]
    assert billing is table.by_token_hash[hash_token(ALICE)]
    assert billing.services == {Service.EMAIL, Service.SMS}
    assert not billing.sync
    assert table.by_certificate["reports.internal"] == Client("reports")
    assert len(table) == 2


def test_a_weight_is_the_clients_share_and_one_by_default_or_when_not_listed() -> None:
    table = parse_clients(f"alice {hash_token(ALICE)} weight=3\nbob cert:bob.example\n")

    assert table.by_token_hash[hash_token(ALICE)] == Client("alice", weight=3)
    assert (table.weight("alice"), table.weight("bob"), table.weight("anonymous")) == (3, 1, 1)


def test_two_hashes_on_one_line_while_a_token_is_rotated() -> None:
    table = parse_clients(f"alice {hash_token(ALICE)} {hash_token(BOB)}\n")
    assert table.by_token_hash[hash_token(ALICE)] == table.by_token_hash[hash_token(BOB)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f"alice {hash_token(ALICE)}\nalice {hash_token(BOB)}\n",
            "line 2: client 'alice' is listed twice",
        ),
        (
            f"alice {hash_token(ALICE)}\nbob {hash_token(ALICE)}\n",
            "line 2: the token hash of 'alice' is used again",
        ),
        (
            "alice cert:a.example\nbob cert:a.example\n",
            "line 2: certificate identity 'a.example' of 'alice' is used again",
        ),
        ("alice\n", "line 1: the client has no credential"),
        ("alice services=email\n", "line 1: the client has no credential"),
        ("alice sha256:abc\n", "line 1: sha256: must be followed by 64 lowercase hex digits"),
        (f"alice {hash_token(ALICE)} services=fax\n", "line 1: services= takes"),
        (f"alice {hash_token(ALICE)} sync=maybe\n", "line 1: sync= takes true or false"),
        (f"alice {hash_token(ALICE)} weight=0\n", "line 1: weight= takes a whole number"),
        (f"alice {hash_token(ALICE)} weight=1.5\n", "line 1: weight= takes a whole number"),
        (f"alice {hash_token(ALICE)} weight=1001\n", "line 1: weight= takes a whole number"),
        (f"al ice {hash_token(ALICE)}\n", "line 1: expected sha256:HEX"),
        (f"-x {hash_token(ALICE)}\n", "line 1: bad client name"),
    ],
)
def test_a_bad_line_refuses_the_file_naming_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^line") as info:
        parse_clients(text)
    assert str(info.value).startswith(message)


def test_a_plain_token_is_refused_and_never_echoed() -> None:
    with pytest.raises(ValueError, match="plain tokens are not accepted") as info:
        parse_clients("alice alice-token-0123456789\n")
    assert "alice-token-0123456789" not in str(info.value)
    assert "dispatcher-gateway token hash" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "dgw_pasted-token-0123456789\n",
        f"alice {hash_token(ALICE)}\n\ndgw_pasted-token-0123456789  # carol\n",
        "carol dgw_pasted-token-0123456789 services=email\n",
    ],
    ids=["alone", "among-good-lines", "in-place-of-its-hash"],
)
def test_a_pasted_token_is_never_echoed_wherever_it_stands(text: str) -> None:
    with pytest.raises(ValueError, match=r"^line \d: ") as info:
        parse_clients(text)
    assert "pasted-token" not in str(info.value)
    assert "token hash` prints a token's line" in str(info.value)


def test_what_a_client_may_not_do_is_named() -> None:
    limited = Client("billing", frozenset({Service.EMAIL}), sync=False)
    assert limited.refusal([Service.EMAIL], Mode.ASYNC) is None
    assert limited.refusal([Service.FILE, Service.EMAIL]) == (
        "client 'billing' may not use service file"
    )
    assert limited.refusal([Service.EMAIL], Mode.SYNC) == (
        "client 'billing' may not dispatch with MODE_SYNC (sync=false)"
    )
    assert Client("anyone").refusal(list(Service), Mode.SYNC) is None


def test_a_changed_file_is_read_again_on_the_next_look(tmp_path: Path) -> None:
    path = tmp_path / "clients"
    path.write_text(f"alice {hash_token(ALICE)}\n")
    clients = ClientsFile(path)
    assert hash_token(ALICE) in clients.current().by_token_hash
    replace(path, f"alice {hash_token(BOB)}\n")
    table = clients.current()
    assert hash_token(BOB) in table.by_token_hash
    assert hash_token(ALICE) not in table.by_token_hash


def test_a_bad_new_version_keeps_the_last_good_one_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "clients"
    path.write_text(f"alice {hash_token(ALICE)}\n")
    clients = ClientsFile(path)
    with caplog.at_level(logging.INFO, logger="dispatcher_gateway.rpc"):
        replace(path, f"alice {hash_token(ALICE)}\nalice {hash_token(BOB)}\n")
        for _ in range(3):
            assert hash_token(ALICE) in clients.current().by_token_hash
        path.unlink()
        assert hash_token(ALICE) in clients.current().by_token_hash
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "line 2: client 'alice' is listed twice; keeping the previous version" in lines[0]
    assert "cannot read" in lines[1]
    assert all("\n" not in line for line in lines)


def test_a_malformed_new_version_is_named_by_file_and_line_and_the_last_good_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "clients"
    path.write_text(f"alice {hash_token(ALICE)}\n")
    clients = ClientsFile(path)
    with caplog.at_level(logging.INFO, logger="dispatcher_gateway.rpc"):
        replace(path, f"alice {hash_token(ALICE)}\nbob {BOB}\n")
        assert clients.current().by_token_hash == {hash_token(ALICE): Client("alice")}
        replace(path, f"alice {hash_token(ALICE)}\nbob {hash_token(BOB)}\n")
        assert set(clients.current().by_token_hash) == {hash_token(ALICE), hash_token(BOB)}
    refused, reloaded = [r.getMessage() for r in caplog.records]
    assert refused.startswith(f"clients file {path}: line 2: expected sha256:HEX")
    assert refused.endswith("keeping the previous version (1 clients)")
    assert BOB not in refused
    assert reloaded == f"clients file {path} reloaded: 2 clients"


def test_a_file_that_is_not_text_is_refused_without_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "clients"
    path.write_bytes(b"alice \xff\xfe secret\n")
    with pytest.raises(ValueError, match="cannot read") as info:
        load_clients(path)
    assert str(path) in str(info.value)
    assert "secret" not in str(info.value)
