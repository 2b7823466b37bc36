"""Jobs: create-if-absent by (client, idempotency key), get, list."""

from __future__ import annotations

import asyncio
import time

from dispatcher_gateway.core import states
from dispatcher_gateway.core.model import JobState, UpstreamFailure
from dispatcher_gateway.core.ports import Store
from tests.support.builders import CLIENT, OTHER_CLIENT, append, create, new_job, queued_event


async def test_a_created_job_reads_back_equal(store: Store) -> None:
    job = new_job(key="k-1")

    stored, created = await store.create_job(job, queued_event(job), enqueue=False)

    assert created
    assert stored == job
    assert await store.get_job(job.job_id) == job


async def test_an_unknown_job_is_none(store: Store) -> None:
    assert await store.get_job("job-unknown") is None


async def test_create_records_the_first_event_with_a_cursor(store: Store) -> None:
    job = new_job()
    first = queued_event(job)

    before = time.time()
    await store.create_job(job, first, enqueue=False)
    after = time.time()

    [recorded] = await store.read_events(client=CLIENT, job_id=job.job_id)
    assert recorded.cursor == await store.last_cursor()
    assert before <= recorded.record_time <= after
    assert recorded.replace(cursor="", record_time=0.0) == first


async def test_same_client_and_key_twice_gives_the_first_job(store: Store) -> None:
    first = new_job(key="order-7")
    second = new_job(key="order-7")
    await store.create_job(first, queued_event(first), enqueue=False)

    stored, created = await store.create_job(second, queued_event(second), enqueue=False)

    assert not created
    assert stored == first
    assert await store.get_job(second.job_id) is None
    assert len(await store.read_events(client=CLIENT)) == 1


async def test_same_key_for_two_clients_gives_two_jobs(store: Store) -> None:
    mine = new_job(CLIENT, key="order-7")
    theirs = new_job(OTHER_CLIENT, key="order-7")

    _, mine_created = await store.create_job(mine, queued_event(mine), enqueue=False)
    _, theirs_created = await store.create_job(theirs, queued_event(theirs), enqueue=False)

    assert mine_created
    assert theirs_created
    assert await store.get_job(mine.job_id) == mine
    assert await store.get_job(theirs.job_id) == theirs


async def test_a_job_is_found_by_its_clients_key_and_by_nobody_elses(store: Store) -> None:
    job = new_job(CLIENT, key="order-9")
    await store.create_job(job, queued_event(job), enqueue=False)
    await append(store, job, states.SUBMITTED)

    found = await store.job_by_key(CLIENT, "order-9")

    assert found is not None
    assert (found.job_id, found.state) == (job.job_id, JobState.SUBMITTED)
    assert await store.job_by_key(OTHER_CLIENT, "order-9") is None
    assert await store.job_by_key(CLIENT, "order-10") is None


async def test_jobs_without_a_key_are_never_merged(store: Store) -> None:
    one = await create(store)
    two = await create(store)

    jobs, _ = await store.list_jobs(CLIENT, limit=10)

    assert {j.job_id for j in jobs} == {one.job_id, two.job_id}


async def test_a_retried_create_of_the_same_job_writes_nothing_more(store: Store) -> None:
    job = new_job()
    await store.create_job(job, queued_event(job), enqueue=True)

    stored, created = await store.create_job(job, queued_event(job), enqueue=True)

    assert not created
    assert stored == job
    assert len(await store.read_events(client=CLIENT)) == 1
    assert len(await store.lease(limit=10, visibility=30)) == 1


async def test_concurrent_creates_with_one_key_create_exactly_one_job(store: Store) -> None:
    jobs = [new_job(key="burst") for _ in range(20)]

    results = await asyncio.gather(
        *(store.create_job(job, queued_event(job), enqueue=True) for job in jobs)
    )

    created = [stored for stored, was_created in results if was_created]
    assert len(created) == 1
    assert {stored.job_id for stored, _ in results} == {created[0].job_id}
    listed, _ = await store.list_jobs(CLIENT, limit=100)
    assert [j.job_id for j in listed] == [created[0].job_id]
    assert len(await store.read_events(client=CLIENT)) == 1
    assert [lease.job_id for lease in await store.lease(limit=100, visibility=30)] == [
        created[0].job_id
    ]


async def test_every_job_field_survives_an_update(store: Store) -> None:
    job = await create(store)
    await append(store, job, states.SUBMITTED)
    await store.append_event(
        queued_event(job).replace(
            type="dispatch_failed",
            data={"error": {"code": "bad", "message": "no", "http_status": 422, "details": {}}},
            dispatch_id="d-1",
        ),
        dedupe_key=None,
        apply=states.apply_event,
    )

    stored = await store.get_job(job.job_id)

    assert stored is not None
    assert stored.state is JobState.FAILED
    assert stored.dispatch_id == "d-1"
    assert stored.error == UpstreamFailure(code="bad", message="no", http_status=422)
    assert stored.last_event == "dispatch_failed"
    assert (
        stored.replace(
            state=job.state,
            dispatch_id="",
            error=None,
            last_event="",
            updated_at=job.updated_at,
        )
        == job
    )


async def test_list_jobs_pages_newest_first_covering_every_job_once(store: Store) -> None:
    # Two pairs share a creation time, so the order must also break ties.
    times = [100.0, 101.0, 101.0, 102.0, 103.0, 103.0, 104.0]
    jobs = [await create(store, created_at=t) for t in times]
    await create(store, OTHER_CLIENT, created_at=101.5)

    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = await store.list_jobs(CLIENT, limit=3, page_token=token)
        pages.append([j.job_id for j in page])
        if not token:
            break

    expected = [j.job_id for j in sorted(jobs, key=lambda j: (j.created_at, j.job_id))][::-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == expected


async def test_list_jobs_last_full_page_has_no_next_token(store: Store) -> None:
    for t in (1.0, 2.0, 3.0, 4.0):
        await create(store, created_at=t)

    first, token = await store.list_jobs(CLIENT, limit=2)
    second, last_token = await store.list_jobs(CLIENT, limit=2, page_token=token)

    assert [j.created_at for j in first + second] == [4.0, 3.0, 2.0, 1.0]
    assert last_token == ""


async def test_list_jobs_of_a_client_without_jobs_is_empty(store: Store) -> None:
    await create(store, CLIENT)

    assert await store.list_jobs(OTHER_CLIENT, limit=10) == ([], "")
