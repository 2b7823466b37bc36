"""Reading jobs: one job, a client's jobs page by page, and the requests sent upstream for one.

A job is only ever its own client's: another client's job reads as no job at all.
"""

from __future__ import annotations

from .errors import FieldViolation, InvalidArgument, NotFound
from .model import Job, UpstreamAttempt
from .ports import Store
from .records import JobRecords

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class JobReads:
    def __init__(self, store: Store, records: JobRecords) -> None:
        self.store = store
        self.records = records

    async def get_job(self, client: str, job_id: str) -> Job:
        job = await self.store.get_job(job_id) if job_id else None
        if job is None or job.client != client:
            raise NotFound(f"job {job_id!r} not found")
        return job

    async def list_jobs(
        self, client: str, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        if page_size < 0:
            raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            return await self.store.list_jobs(client, limit=size, page_token=page_token)
        # What a store's decoder raised on a token it never issued (OverflowError: a time no
        # float holds): its text is not for callers.
        except (ValueError, RecursionError, OverflowError) as exc:
            raise InvalidArgument(
                [FieldViolation("page_token", "is not a token this server issued")]
            ) from exc

    async def attempts(self, job: Job) -> list[UpstreamAttempt]:
        """The requests sent upstream for the job so far, oldest first."""
        return await self.records.attempts(job)
