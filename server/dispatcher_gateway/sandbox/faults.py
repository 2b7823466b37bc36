"""Fault injection: how a dispatch request is refused before the sandbox looks at it (the
`refuse_next` list, the rate limit, 429s and 5xx at their rates), and the refusals themselves."""

from __future__ import annotations

import email.utils
import math
import random
import time

from .errors import ApiError
from .settings import Faults
from .validation import CheckedRequest

SERVER_ERRORS: tuple[tuple[int, str, str], ...] = (
    (500, "internal_error", "An internal error occurred"),
    (502, "bad_gateway", "The provider could not be reached"),
    (503, "service_unavailable", "The service is temporarily unavailable"),
)


def roll(rng: random.Random, rate: float) -> bool:
    """True with probability `rate`; a rate of 0 draws nothing, so it leaves the dice as they
    were."""
    return rate > 0 and rng.random() < rate


def refuse_or_pass(faults: Faults, rng: random.Random) -> None:
    """Raise the refusal the faults pick for this dispatch request, if any: the next status of
    `refuse_next`, then a 429 at `rate_limit_rate`, then a 5xx at `error_rate`."""
    if faults.refuse_next:
        status = faults.refuse_next.pop(0)
        if status == 429:
            raise rate_limited(faults.retry_after, http_date=faults.retry_after_http_date)
        _, code, message = next(e for e in SERVER_ERRORS if e[0] == status)
        raise ApiError(status, code, message)
    if roll(rng, faults.rate_limit_rate):
        raise rate_limited(faults.retry_after, http_date=faults.retry_after_http_date)
    if roll(rng, faults.error_rate):
        status, code, message = rng.choice(SERVER_ERRORS)
        raise ApiError(status, code, message)


def unavailable() -> ApiError:
    """The 503 of a request that was not processed after all (see idempotency.py)."""
    status, code, message = SERVER_ERRORS[-1]
    return ApiError(status, code, message)


def rate_limited(seconds: float, *, http_date: bool) -> ApiError:
    whole = math.ceil(seconds)
    value = email.utils.formatdate(time.time() + whole, usegmt=True) if http_date else str(whole)
    return ApiError(
        429,
        "rate_limited",
        "Too many requests; retry later",
        headers={"Retry-After": value},
    )


def provider_failure(checked: CheckedRequest) -> ApiError:
    """What a provider's refusal (the `fail_rate` fault) is answered in sync mode."""
    return ApiError(
        417,
        "provider_error",
        f"{checked.provider} refused the {checked.service} dispatch",
        field="providerName",
        value=checked.provider,
        expected=f"a request {checked.provider} accepts",
    )
