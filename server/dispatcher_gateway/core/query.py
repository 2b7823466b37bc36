"""Which jobs an operator asks for (the console's job list): any client's, filtered by client,
service, state and creation time. Stores answer `Store.find_jobs` with it; the backends that
filter in Python share `JobQuery.matches`, SQLite says the same in SQL."""

from __future__ import annotations

from dataclasses import dataclass

from .model import Job, JobState, Service


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Empty fields match everything. A job's service is its first (`Job.service`), as its
    events carry it."""

    client: str = ""
    services: frozenset[Service] = frozenset()
    states: frozenset[JobState] = frozenset()
    created_from: float | None = None
    """Created at or after this time (seconds since the epoch)."""
    created_before: float | None = None
    """Created strictly before this time."""

    def created_in(self, created_at: float) -> bool:
        if self.created_from is not None and created_at < self.created_from:
            return False
        return self.created_before is None or created_at < self.created_before

    def matches(self, job: Job) -> bool:
        return (
            (not self.client or job.client == self.client)
            and (not self.services or job.service in self.services)
            and (not self.states or job.state in self.states)
            and self.created_in(job.created_at)
        )
