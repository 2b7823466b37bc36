"""The few named errors of the domain. rpc/errors.py maps them to gRPC status codes, and
webhooks/ to HTTP statuses, each in one table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .model import UpstreamAttempt, UpstreamFailure


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(GatewayError):
    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class NotFound(GatewayError):
    """Unknown, or someone else's: the two are indistinguishable on purpose."""


class IdempotencyConflict(GatewayError):
    """The idempotency key was used before with a different request."""


class WrongState(GatewayError):
    """The job is not in a state the call can act on: a cancel too late, a retry of a job that
    did not fail or whose failure does not prove the upstream left it undone."""


class RateLimited(GatewayError):
    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StoreUnavailable(GatewayError):
    """The store cannot be reached; nothing was written."""


class ShuttingDown(GatewayError):
    """The gateway is draining; the caller should retry elsewhere or resume later."""


class SlowConsumer(GatewayError):
    """A stream's reader fell too far behind; it resumes from its last cursor."""


class UpstreamError(GatewayError):
    """The upstream refused or failed a request.

    `retryable` is true for what is safe to send again with the same idempotency key: no
    answer, a timeout, the upstream's own failure, or its rate limit. `timeout` marks no answer
    in time. `refused` marks an answer that turned the request away (a client error, the rate
    limit among them): the upstream is up, and the circuit breaker counts it as working.
    """

    def __init__(
        self,
        failure: UpstreamFailure,
        *,
        retryable: bool,
        timeout: bool = False,
        refused: bool = False,
        retry_after: float | None = None,
        attempt: UpstreamAttempt | None = None,
    ) -> None:
        self.failure = failure
        self.retryable = retryable
        self.timeout = timeout
        self.refused = refused
        self.retry_after = retry_after
        self.attempt = attempt
        """The request that failed, when one was sent (dispatches only)."""
        super().__init__(f"upstream {failure.http_status or 'no answer'}: {failure.message}")
