"""The fuzzer's gateway (a real process against the sandbox), its time budget, and the figures
printed at the end of the run: inputs tried and failures, per edge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher_gateway.rpc.clients import client_line
from tests.support.fixtures import sandbox, sandbox_options, tls
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.process import gateway_env, gateway_process

from .budget import REPORTS, Budget
from .target import CLIENT, TOKEN, TOKEN_KEY, FuzzTarget

__all__ = ["fuzz_target", "sandbox", "sandbox_options", "tls"]

TIMEOUT_MARGIN = 120
"""Seconds an edge's test may take beyond its share of the budget (its gateway's start, the
checks after the fuzzing), before pytest-timeout stops it."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    budget = Budget.from_env()
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.timeout(budget.seconds + TIMEOUT_MARGIN))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("fuzz: inputs tried per edge")
    terminalreporter.write_line(Budget.from_env().describe())
    for report in REPORTS:
        terminalreporter.write_line(report.line())
    tried = sum(r.tried for r in REPORTS)
    failures = sum(r.failures for r in REPORTS)
    terminalreporter.write_line(f"{'all':<10} {tried:>6} inputs  {failures} failures")


@pytest.fixture
async def fuzz_target(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> AsyncIterator[FuzzTarget]:
    clients = tmp_path / "clients"
    clients.write_text(client_line(CLIENT, TOKEN) + "\n")
    env = gateway_env(sandbox, tls, tmp_path) | {
        "GATEWAY_ALLOW_ANONYMOUS": "false",
        "GATEWAY_CLIENT_TOKENS_FILE": str(clients),
        "GATEWAY_GRPC_TLS_CERT_FILE": tls.cert,
        "GATEWAY_GRPC_TLS_KEY_FILE": tls.key,
        "GATEWAY_TOKEN_KEY": TOKEN_KEY,
        # The fuzzer calls faster than a client is let to by default.
        "GATEWAY_CLIENT_DISPATCH_RATE": "100000/s",
    }
    process = gateway_process(env, tmp_path / "gateway.log")
    await process.start()
    try:
        yield FuzzTarget(process, tls, env["GATEWAY_STORE"])
    finally:
        await process.close()
