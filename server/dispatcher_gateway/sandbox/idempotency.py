"""X-Idempotency-Key: what the sandbox remembers of each key, so that a request repeated under
it is answered the first request's answer (a replay) and never processed twice, and a different
request under it is refused 409."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError
from .faults import unavailable

JSON = dict[str, Any]

HEADER_IDEMPOTENCY_KEY = "X-Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True, slots=True)
class Answer:
    """What a processed dispatch request was answered, kept for replays of its key."""

    status: int
    body: JSON | None = None
    error: ApiError | None = None
    dispatch_id: str | None = None


@dataclass(slots=True)
class _Remembered:
    fingerprint: str
    answer: asyncio.Future[Answer]


def fingerprint(path: str, run_async: bool, body: JSON) -> str:
    """What makes two requests under one key the same request."""
    canonical = json.dumps(
        {"path": path, "async": run_async, "body": body}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    """The keys seen so far, each with its first request's fingerprint and answer."""

    def __init__(self) -> None:
        self._remembered: dict[str, _Remembered] = {}

    async def answer(
        self, key: str, fingerprint: str, process: Callable[[], Awaitable[Answer]]
    ) -> tuple[Answer, bool]:
        """The answer to a request under `key`, and whether it is a replay: the key's first
        answer for the same request (awaited if that one is still processing), 409 for another
        request, else `process()`'s."""
        remembered = self._remembered.get(key)
        if remembered is not None:
            if remembered.fingerprint != fingerprint:
                raise ApiError(
                    409,
                    "idempotency_key_reused",
                    "This idempotency key was used with a different request",
                    field=HEADER_IDEMPOTENCY_KEY,
                    value=key,
                    expected="the same request as the key's first use",
                )
            # A concurrent first use is still processing: share its answer when it comes.
            return await asyncio.shield(remembered.answer), True
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._remembered[key] = _Remembered(fingerprint, future)
        try:
            answer = await process()
        except BaseException:
            # Not processed after all: the key stays free for a retry, and whoever waited on
            # this first use is told to retry too.
            del self._remembered[key]
            error = unavailable()
            future.set_result(Answer(error.status, error=error))
            raise
        future.set_result(answer)
        return answer, False
