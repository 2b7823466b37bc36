"""The Docs-Dispatcher REST API client."""

from .client import (
    CODE_BAD_RESPONSE,
    CODE_TIMEOUT,
    CODE_UNREACHABLE,
    UPSTREAM_TIMEOUT_CAP,
    USER_AGENT,
    DispatcherClient,
    parse_retry_after,
)

__all__ = [
    "CODE_BAD_RESPONSE",
    "CODE_TIMEOUT",
    "CODE_UNREACHABLE",
    "UPSTREAM_TIMEOUT_CAP",
    "USER_AGENT",
    "DispatcherClient",
    "parse_retry_after",
]
