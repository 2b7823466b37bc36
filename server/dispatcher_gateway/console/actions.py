"""What an operator may do to a job: the client API's RetryJob and CancelJob, through the same
core calls (core/control.py), for the job's own client. The console asks this port; app.py
hands it `CoreActions` over the gateway's `JobControl`."""

from __future__ import annotations

from typing import Protocol

from ..core.control import JobControl
from ..core.model import Job


class JobActions(Protocol):
    async def retry(self, job: Job) -> Job:
        """Send the failed job again as a new job, for the same client; returns the new job (the
        one made before, for a job retried already). Raises core.errors' WrongState when the
        job may not be retried, naming why."""

    async def cancel(self, job: Job) -> Job:
        """Cancel a job whose submission has not begun; returns it as it is after. Raises
        WrongState when it is too late."""


class CoreActions:
    """JobActions through core's JobControl, as the job's client would call it."""

    def __init__(self, control: JobControl) -> None:
        self.control = control

    async def retry(self, job: Job) -> Job:
        return await self.control.retry(job.client, job.job_id)

    async def cancel(self, job: Job) -> Job:
        return await self.control.cancel(job.client, job.job_id)
