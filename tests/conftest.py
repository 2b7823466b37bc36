"""Suite-wide options and fixtures, and which tests are slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.nats_server import add_option, nats_server, start_nats_server

__all__ = ["nats_server", "start_nats_server"]

SLOW_FOLDERS = ("e2e", "fuzz", "browser")
"""Real processes and servers on loopback: the whole of these suites is slow."""
NATS_FIXTURES = frozenset({"nats_server", "start_nats_server"})


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(parser)


def is_slow(item: pytest.Item) -> bool:
    """Slow: what starts processes or servers (tests/e2e, tests/fuzz, the benchmarks' smoke
    test), or needs NATS (its fixtures, or the contract suite on the NATS backend). `make
    test-fast` leaves these out."""
    folder = item.path.relative_to(Path(__file__).parent).parts[0]
    if folder in SLOW_FOLDERS or item.get_closest_marker("slow"):
        return True
    if NATS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("backend") == "nats"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
