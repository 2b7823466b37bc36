"""Suite-wide options and fixtures."""

from __future__ import annotations

import pytest

from tests.support.nats_server import add_option, nats_server, start_nats_server

__all__ = ["nats_server", "start_nats_server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(parser)
