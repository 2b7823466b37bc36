"""Events: append with dedupe and the apply fold, read by client and job after a cursor."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import NotFound
from dispatcher_gateway.core.model import Job, JobEvent, JobState
from dispatcher_gateway.core.ports import Store
from tests.support.builders import CLIENT, OTHER_CLIENT, append, create, event_for, new_job


async def test_append_returns_the_event_as_recorded(store: Store) -> None:
    job = await create(store)
    sent = event_for(job, "letter_created")

    recorded = await store.append_event(sent, dedupe_key="wh-1", apply=states.apply_event)

    assert recorded is not None
    assert recorded.cursor == await store.last_cursor()
    assert recorded.record_time >= sent.event_time
    assert recorded.state is JobState.IN_PROGRESS
    assert recorded.replace(cursor="", record_time=0.0) == sent.replace(state=JobState.IN_PROGRESS)
    assert (await store.read_events(client=CLIENT))[-1] == recorded


async def test_append_moves_the_job_as_apply_says(store: Store) -> None:
    job = await create(store)

    done = await append(store, job, states.COMPLETED)

    assert done.state is JobState.SUCCEEDED
    assert done.terminal
    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is JobState.SUCCEEDED
    assert stored.result == done.data


async def test_a_late_event_after_the_end_is_recorded_but_does_not_reopen_the_job(
    store: Store,
) -> None:
    job = await create(store)
    await append(store, job, states.COMPLETED)

    late = await append(store, job, "letter_in_transit")

    assert late.state is JobState.SUCCEEDED
    assert not late.terminal
    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is JobState.SUCCEEDED
    assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 3


async def test_the_store_records_what_apply_returns(store: Store) -> None:
    job = await create(store)

    def rewrite(current: Job, event: JobEvent) -> tuple[Job, JobEvent]:
        # The body may be left out (it never changes after the create); the rest is the job.
        assert current.replace(body=job.body) == job
        return (
            current.replace(dispatch_id="d-42", last_event="custom"),
            event.replace(type="rewritten", dispatch_id="d-42"),
        )

    recorded = await store.append_event(event_for(job), dedupe_key=None, apply=rewrite)

    assert recorded is not None
    assert (recorded.type, recorded.dispatch_id) == ("rewritten", "d-42")
    assert (await store.read_events(client=CLIENT, job_id=job.job_id))[-1] == recorded
    assert await store.get_job(job.job_id) == job.replace(dispatch_id="d-42", last_event="custom")


async def test_append_to_an_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.append_event(event_for(new_job()), dedupe_key="wh-1", apply=states.apply_event)


async def test_a_not_found_append_does_not_burn_its_dedupe_key(store: Store) -> None:
    job = await create(store)
    with pytest.raises(NotFound):
        await store.append_event(event_for(new_job()), dedupe_key="wh-1", apply=states.apply_event)

    assert await store.append_event(event_for(job), dedupe_key="wh-1", apply=states.apply_event)


async def test_a_failing_apply_writes_nothing(store: Store) -> None:
    job = await create(store)

    def broken(current: Job, event: JobEvent) -> tuple[Job, JobEvent]:
        raise ValueError("broken fold")

    with pytest.raises(ValueError, match="broken fold"):
        await store.append_event(event_for(job), dedupe_key="wh-1", apply=broken)

    assert await store.get_job(job.job_id) == job
    assert len(await store.read_events(client=CLIENT)) == 1
    assert await store.append_event(event_for(job), dedupe_key="wh-1", apply=states.apply_event)


async def test_a_failing_append_does_not_undo_concurrent_ones(store: Store) -> None:
    job = await create(store)
    events = [event_for(job) for _ in range(5)]
    stray = event_for(new_job())

    results = await asyncio.gather(
        *(store.append_event(e, dedupe_key=None, apply=states.apply_event) for e in events),
        store.append_event(stray, dedupe_key=None, apply=states.apply_event),
        return_exceptions=True,
    )

    assert isinstance(results[-1], NotFound)
    assert all(isinstance(r, JobEvent) for r in results[:-1])
    assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 6


async def test_a_duplicate_dedupe_key_returns_none_and_writes_nothing(store: Store) -> None:
    job = await create(store)
    first = await append(store, job, "letter_created", dedupe_key="wh-1")

    again = await store.append_event(
        event_for(job, states.COMPLETED), dedupe_key="wh-1", apply=states.apply_event
    )

    assert again is None
    assert (await store.read_events(client=CLIENT, job_id=job.job_id))[-1] == first
    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is JobState.IN_PROGRESS


async def test_a_dedupe_key_is_one_across_jobs(store: Store) -> None:
    one = await create(store)
    two = await create(store, OTHER_CLIENT)
    await append(store, one, dedupe_key="wh-1")

    again = await store.append_event(event_for(two), dedupe_key="wh-1", apply=states.apply_event)

    assert again is None
    assert len(await store.read_events(client=OTHER_CLIENT, job_id=two.job_id)) == 1


async def test_events_without_a_dedupe_key_are_all_kept(store: Store) -> None:
    job = await create(store)

    for _ in range(3):
        await append(store, job, dedupe_key=None)

    assert len(await store.read_events(client=CLIENT, job_id=job.job_id)) == 4


async def test_concurrent_appends_with_one_dedupe_key_append_exactly_one(store: Store) -> None:
    job = await create(store)

    results = await asyncio.gather(
        *(
            store.append_event(event_for(job), dedupe_key="wh-burst", apply=states.apply_event)
            for _ in range(20)
        )
    )

    appended = [r for r in results if r is not None]
    assert len(appended) == 1
    assert (await store.read_events(client=CLIENT, job_id=job.job_id))[1:] == appended


async def test_cursors_strictly_increase_across_jobs_and_clients(store: Store) -> None:
    jobs = [await create(store, client) for client in (CLIENT, OTHER_CLIENT, CLIENT)]
    recorded = [await append(store, jobs[i % 3]) for i in range(9)]

    cursors = [int(e.cursor) for e in recorded]

    assert cursors == sorted(set(cursors))


async def test_read_events_gives_only_the_clients_events_in_cursor_order(store: Store) -> None:
    mine = await create(store, CLIENT)
    theirs = await create(store, OTHER_CLIENT)
    await append(store, theirs)
    await append(store, mine)

    events = await store.read_events(client=CLIENT)

    assert {e.client for e in events} == {CLIENT}
    assert [e.job_id for e in events] == [mine.job_id, mine.job_id]
    assert [int(e.cursor) for e in events] == sorted(int(e.cursor) for e in events)


async def test_read_events_of_one_job(store: Store) -> None:
    one = await create(store)
    two = await create(store)
    await append(store, one)
    await append(store, two)

    events = await store.read_events(client=CLIENT, job_id=two.job_id)

    assert [(e.job_id, e.type) for e in events] == [
        (two.job_id, states.QUEUED),
        (two.job_id, "letter_created"),
    ]


async def test_read_events_of_someone_elses_job_is_empty(store: Store) -> None:
    theirs = await create(store, OTHER_CLIENT)

    assert await store.read_events(client=CLIENT, job_id=theirs.job_id) == []


async def test_read_events_after_a_cursor_and_up_to_a_limit(store: Store) -> None:
    job = await create(store)
    recorded = [await append(store, job) for _ in range(5)]

    events = await store.read_events(client=CLIENT, after=recorded[0].cursor, limit=3)

    assert events == recorded[1:4]


async def test_read_events_after_the_last_cursor_is_empty(store: Store) -> None:
    job = await create(store)
    last = await append(store, job)

    assert await store.read_events(client=CLIENT, after=last.cursor) == []


async def test_last_cursor_is_empty_on_an_empty_store(store: Store) -> None:
    assert await store.last_cursor() == ""


async def test_last_cursor_is_the_newest_events(store: Store) -> None:
    job = await create(store)
    await append(store, job)
    newest = await append(store, job)

    assert await store.last_cursor() == newest.cursor
