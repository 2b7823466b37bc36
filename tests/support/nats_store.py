"""What the NATS store's own tests share: a store under names of its own, a wait until it
answers again, and a crash at a chosen step."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from dispatcher_gateway.core.errors import StoreUnavailable
from dispatcher_gateway.store.nats import NatsStore

FAST = 0.5
"""The request timeout of stores in these tests: failures show at once."""
RECOVERY = 15.0
"""The longest a store may take to answer again once NATS is back."""


class Crash(Exception):
    """Stands for the process dying at that point."""


def new_store(servers: list[str], **options: Any) -> NatsStore:
    """A store with names of its own (the session's server is shared) and the FAST timeout."""
    options.setdefault("timeout", FAST)
    return NatsStore(servers, prefix=f"t{uuid.uuid4().hex[:12]}", **options)


async def until_answers(call: Callable[[], Awaitable[object]]) -> None:
    async with asyncio.timeout(RECOVERY):
        while True:
            try:
                await call()
                return
            except StoreUnavailable:
                await asyncio.sleep(0.1)


def crash_once(target: object, name: str, error: Exception | None = None) -> None:
    """Make `target.name` raise `error` (Crash by default) on its next call, then behave again."""
    original = getattr(target, name)

    async def crashing(*args: Any, **kwargs: Any) -> Any:
        setattr(target, name, original)
        raise error if error is not None else Crash

    setattr(target, name, crashing)
