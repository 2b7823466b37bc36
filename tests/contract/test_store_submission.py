"""begin_submission, the store's point of no return for a job, against a cancel's append (the
rule in core/ports.py): whichever of the two a job's record takes first, the other sees it, on
one store or on two replicas of it. And the links of a retried job kept by every backend."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.control import fold_cancel
from dispatcher_gateway.core.errors import NotFound, WrongState
from dispatcher_gateway.core.model import Job, JobState
from dispatcher_gateway.core.ports import Store
from tests.support.builders import (
    StoreFactory,
    append,
    create,
    event_for,
    new_job,
    queued_event,
)

RACING_JOBS = 40


async def cancel(store: Store, job: Job) -> bool:
    """The cancel's append as core makes it: True if it ended the job, False if refused."""
    event = event_for(job, states.CANCELED, data={"canceled_by": job.client})
    try:
        recorded = await store.append_event(
            event, dedupe_key=f"{job.job_id}:canceled", apply=fold_cancel
        )
    except WrongState:
        return False
    return recorded is not None and recorded.terminal


async def test_begin_submission_marks_a_queued_job_once(store: Store) -> None:
    job = await create(store, enqueue=True)

    begun = await store.begin_submission(job.job_id)
    again = await store.begin_submission(job.job_id)

    assert begun.state is JobState.QUEUED
    assert begun.submit_begun_at > 0
    assert again.submit_begun_at == begun.submit_begun_at
    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.submit_begun_at == begun.submit_begun_at


async def test_begin_submission_of_an_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.begin_submission("job-none")


async def test_a_canceled_job_is_never_begun(store: Store) -> None:
    job = await create(store, enqueue=True)
    assert await cancel(store, job)

    begun = await store.begin_submission(job.job_id)

    assert begun.state is JobState.CANCELED
    assert begun.submit_begun_at == 0
    events = await store.read_events(client=job.client, job_id=job.job_id)
    assert [(e.type, e.terminal) for e in events] == [("queued", False), ("canceled", True)]


async def test_a_begun_job_refuses_the_cancel_and_nothing_is_written(store: Store) -> None:
    job = await create(store, enqueue=True)
    await store.begin_submission(job.job_id)

    assert not await cancel(store, job)

    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is JobState.QUEUED
    events = await store.read_events(client=job.client, job_id=job.job_id)
    assert [e.type for e in events] == ["queued"]
    # The refused cancel left no dedupe key behind: the job's own events go on.
    await append(store, job, states.SUBMITTED, dedupe_key=f"{job.job_id}:submitted")


async def test_a_begun_job_keeps_its_events_and_mark_through_later_appends(store: Store) -> None:
    job = await create(store, enqueue=True)
    begun = await store.begin_submission(job.job_id)
    await append(store, job, states.SUBMITTED, dedupe_key=f"{job.job_id}:submitted")
    await append(store, job, "letter_delivered")

    stored = await store.get_job(job.job_id)

    assert stored is not None
    assert (stored.state, stored.submit_begun_at) == (JobState.SUCCEEDED, begun.submit_begun_at)
    events = await store.read_events(client=job.client, job_id=job.job_id)
    assert [e.type for e in events] == ["queued", "submitted", "letter_delivered"]


async def test_begin_and_cancel_racing_end_each_job_exactly_one_way(
    store: Store, new_store: StoreFactory
) -> None:
    """The cancels go through a second store on the same data where the backend has one (a
    replica: the same file, the same NATS); the in-memory store is its one replica."""
    second = new_store()
    async with contextlib.AsyncExitStack() as stack:
        cancels = store
        if second is not store:
            await second.open()
            stack.push_async_callback(second.close)
            cancels = second
        jobs = [await create(store, enqueue=True) for _ in range(RACING_JOBS)]

        async def race(job: Job, cancel_first: bool) -> tuple[bool, bool]:
            if cancel_first:
                canceled, begun = await asyncio.gather(
                    cancel(cancels, job), store.begin_submission(job.job_id)
                )
            else:
                begun, canceled = await asyncio.gather(
                    store.begin_submission(job.job_id), cancel(cancels, job)
                )
            return not begun.state.terminal, canceled

        outcomes = await asyncio.gather(*(race(job, i % 2 == 1) for i, job in enumerate(jobs)))

    for job, (sent, canceled) in zip(jobs, outcomes, strict=True):
        assert sent != canceled, job.job_id
        stored = await store.get_job(job.job_id)
        assert stored is not None
        if canceled:
            assert (stored.state, stored.submit_begun_at) == (JobState.CANCELED, 0)
        else:
            assert stored.state is JobState.QUEUED
            assert stored.submit_begun_at > 0


async def test_a_retry_job_keeps_its_link_and_the_failed_job_gets_retried_by(
    store: Store,
) -> None:
    failed = await create(store)
    await append(store, failed, states.FAILED, dedupe_key=f"{failed.job_id}:failed")
    retry = new_job().replace(retry_of=failed.job_id)
    await store.create_job(retry, queued_event(retry), enqueue=True)

    recorded = await store.append_event(
        event_for(failed, states.RETRIED, data={"retried_by": retry.job_id}),
        dedupe_key=f"{failed.job_id}:retried",
        apply=states.apply_event,
    )

    assert recorded is not None
    assert (recorded.state, recorded.terminal) == (JobState.FAILED, False)
    old = await store.get_job(failed.job_id)
    new = await store.get_job(retry.job_id)
    assert old is not None
    assert new is not None
    assert (old.state, old.retried_by, old.last_event) == (JobState.FAILED, retry.job_id, "failed")
    assert new.retry_of == failed.job_id


async def test_creates_racing_with_one_job_id_make_one_job(store: Store) -> None:
    job = new_job()

    results = await asyncio.gather(
        *(store.create_job(job, queued_event(job), enqueue=True) for _ in range(5))
    )

    assert sorted(created for _, created in results) == [False] * 4 + [True]
    assert {stored.job_id for stored, _ in results} == {job.job_id}
    assert len(await store.read_events(client=job.client, job_id=job.job_id)) == 1
    assert len(await store.lease(limit=10, visibility=30.0)) == 1
