"""GATEWAY_CONSOLE_*: the console is off unless given an address, needs its operators, and
runs without authentication on loopback only."""

from pathlib import Path

import pytest

from dispatcher_gateway.config import ConfigError, Settings
from dispatcher_gateway.console.operators import hash_password

GOOD = {
    "DISPATCHER_BASE_URL": "https://api.docs-dispatcher.io",
    "DISPATCHER_EMAIL": "ops@example.com",
    "DISPATCHER_PASSWORD": "hunter2-not-logged",
    "DISPATCHER_WEBHOOK_SECRET": "whsec-one-0123456",
    "GATEWAY_PUBLIC_URL": "https://gateway.example.com",
    "GATEWAY_GRPC_PLAINTEXT": "true",
    "GATEWAY_ALLOW_ANONYMOUS": "true",
}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.problems


def operators(tmp_path: Path, text: str | None = None) -> str:
    path = tmp_path / "operators"
    path.write_text(text if text is not None else f"ops {hash_password('pw')}\n")
    return str(path)


def test_the_console_is_off_unless_given_an_address() -> None:
    assert Settings.from_env(GOOD).console.addr is None


def test_the_console_with_its_operators(tmp_path: Path) -> None:
    env = {
        **GOOD,
        "GATEWAY_CONSOLE_ADDR": "127.0.0.1:8090",
        "GATEWAY_CONSOLE_OPERATORS_FILE": operators(tmp_path),
    }
    console = Settings.from_env(env).console
    assert (console.addr, console.auth) == ("127.0.0.1:8090", True)


def test_the_console_without_operators_is_refused() -> None:
    [problem] = problems({**GOOD, "GATEWAY_CONSOLE_ADDR": "127.0.0.1:8090"})
    assert problem.startswith("GATEWAY_CONSOLE_OPERATORS_FILE:")


def test_an_operators_file_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    env = {
        **GOOD,
        "GATEWAY_CONSOLE_ADDR": "127.0.0.1:8090",
        "GATEWAY_CONSOLE_OPERATORS_FILE": operators(tmp_path, "ops not-a-hash\n"),
    }
    [problem] = problems(env)
    assert "line 1" in problem


def test_no_authentication_on_loopback_only() -> None:
    loopback = {**GOOD, "GATEWAY_CONSOLE_ADDR": "127.0.0.1:8090", "GATEWAY_CONSOLE_AUTH": "false"}
    assert Settings.from_env(loopback).console.auth is False
    [problem] = problems({**loopback, "GATEWAY_CONSOLE_ADDR": "0.0.0.0:8090"})
    assert problem.startswith("GATEWAY_CONSOLE_AUTH:")
