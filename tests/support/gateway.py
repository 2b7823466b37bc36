"""A core Gateway over a real SQLite store, its hub following the store: for core's unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from dispatcher_gateway.core.hub import EventHub
from dispatcher_gateway.core.model import JSON, DispatchSpec, JobEvent, Mode, Service
from dispatcher_gateway.core.rate import RateGate
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.core.service import Gateway
from dispatcher_gateway.core.tokens import CallbackTokens
from dispatcher_gateway.store.sqlite import SqliteStore

from .upstream import ScriptedUpstream


@dataclass
class Harness:
    gateway: Gateway
    hub: EventHub
    tokens: CallbackTokens

    async def job(self, client: str = "anonymous") -> str:
        spec = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1}})
        return (await self.gateway.submit(client, spec, budget=None)).job_id

    async def webhook(
        self, job_id: str, event: str, webhook_id: str, *, data: JSON | None = None, **extra: str
    ) -> bool:
        envelope = {"event": event, "data": {} if data is None else data, **extra}
        return await self.gateway.record_webhook(
            self.tokens.token(job_id), envelope, webhook_id=webhook_id
        )


@contextlib.asynccontextmanager
async def gateway_harness(folder: Path) -> AsyncIterator[Harness]:
    store = SqliteStore(folder / "s.db")
    await store.open()
    hub = EventHub(backlog=50)
    tokens = CallbackTokens(b"k" * 32)
    gateway = Gateway(
        store,
        ScriptedUpstream(),
        tokens,
        public_url="https://gw.example",
        rate=RateGate(store, RateLimit(1000, 1.0)),
        hub=hub,
    )
    follower = asyncio.create_task(hub.follow(store))
    await asyncio.sleep(0.05)
    try:
        yield Harness(gateway, hub, tokens)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await store.close()


async def take(stream: AsyncIterator[JobEvent], count: int) -> list[JobEvent]:
    """The stream's next `count` events (10 s at most)."""
    out: list[JobEvent] = []
    async with asyncio.timeout(10):
        async for event in stream:
            out.append(event)
            if len(out) == count:
                break
    return out
