"""The account's upstream rate limit, kept through the store for every replica at once."""

from __future__ import annotations

import asyncio

from .errors import RateLimited
from .model import Job, JobEvent
from .ports import Store
from .retry import RateLimit

RATE_MARGIN, RATE_MARGIN_MIN = 0.01, 1.0
"""The rate window is widened by 1% and at least 1 s, against arrival-time jitter."""


class RateGate:
    """Waits for a slot of the account's rate limit, shared through the store."""

    def __init__(self, store: Store, rate: RateLimit) -> None:
        self._store = store
        self.rate = rate

    @property
    def window(self) -> float:
        """Seconds of the window the store keeps: a little wider than the account's, as
        requests reach the upstream a few ms after their slot is taken, not all equally late,
        and the upstream counts arrivals."""
        return self.rate.window + max(RATE_MARGIN_MIN, self.rate.window * RATE_MARGIN)

    async def take(self) -> float:
        """Take a slot now if there is one: 0.0, else the seconds until one frees."""
        return await self._store.acquire_rate(limit=self.rate.limit, window=self.window)

    async def create_taking(self, job: Job, first_event: JobEvent) -> tuple[Job, bool, float]:
        """Store.create_job_taking_slot with this limit: the job created and queued, and a slot
        taken now if there is one, in one write."""
        return await self._store.create_job_taking_slot(
            job, first_event, limit=self.rate.limit, window=self.window
        )

    async def wait(self, budget: float | None = None) -> float:
        """Take a slot, waiting for one at most `budget` seconds (None: as long as it takes).
        Returns the loop's time when it was taken."""
        loop = asyncio.get_running_loop()
        give_up = None if budget is None else loop.time() + budget
        while True:
            wait = await self.take()
            if wait <= 0:
                return loop.time()
            if give_up is not None and loop.time() + wait > give_up:
                raise RateLimited(
                    f"the account's upstream rate limit ({self.rate.limit} per "
                    f"{self.rate.window:g} s) is used up; retry in {wait:.1f} s",
                    retry_after=wait,
                )
            await asyncio.sleep(wait)
