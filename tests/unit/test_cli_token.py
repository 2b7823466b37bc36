"""`dispatcher-gateway token`: a new client's token and its line for the clients file, or the
line for a token given on standard input; and client commands keep tokens off plain networks."""

from __future__ import annotations

import io

import pytest

from dispatcher_gateway.cli import main
from dispatcher_gateway.core.model import Service
from dispatcher_gateway.rpc.clients import hash_token, parse_clients


def test_token_new_prints_a_token_and_the_line_holding_only_its_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "new", "billing", "--services", "email,sms", "--no-sync"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token, line = lines[1].strip(), lines[3].strip()
    assert token.startswith("dgw_")
    assert token not in line
    client = parse_clients(line).by_token_hash[hash_token(token)]
    assert (client.name, client.services, client.sync) == (
        "billing",
        {Service.EMAIL, Service.SMS},
        False,
    )


def test_token_new_writes_the_clients_weight_in_its_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "new", "billing", "--weight", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token, line = lines[1].strip(), lines[3].strip()
    assert parse_clients(line).by_token_hash[hash_token(token)].weight == 3


def test_token_hash_reads_the_token_from_standard_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("dgw_existing-token\n"))
    assert main(["token", "hash", "reports"]) == 0
    assert capsys.readouterr().out == f"reports {hash_token('dgw_existing-token')}\n"


def test_a_token_is_not_sent_in_clear_beyond_this_machine() -> None:
    with pytest.raises(SystemExit, match="refusing to send a bearer token in clear"):
        main(["jobs", "--target", "10.0.0.7:50051", "--token", "dgw_x"])
