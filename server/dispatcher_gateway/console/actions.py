"""What an operator may do to a job, through the same core calls as the client API (RetryJob,
CancelJob): the console asks this port, app.py connects it to core."""

from __future__ import annotations

from typing import Protocol

from ..core.model import Job


class ActionUnavailable(Exception):
    """This gateway cannot do the action (not connected to core)."""


class JobActions(Protocol):
    async def retry(self, job: Job) -> Job:
        """Dispatch the failed job's request again as a new job, for the same client; returns
        the new job. Raises core.errors' FailedPrecondition (or the like) when it may not."""

    async def cancel(self, job: Job) -> Job:
        """Cancel a job that has not ended; returns it as it is after."""


class NotConnected:
    """JobActions for a gateway whose core offers no retry or cancel: each says so."""

    async def retry(self, job: Job) -> Job:
        raise ActionUnavailable("retry is not connected to core on this gateway")

    async def cancel(self, job: Job) -> Job:
        raise ActionUnavailable("cancel is not connected to core on this gateway")
