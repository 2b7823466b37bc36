"""find_jobs: every client's jobs for operators, filtered and paged newest first."""

from __future__ import annotations

from dispatcher_gateway.core import states
from dispatcher_gateway.core.model import Job, JobState, Service
from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.core.query import JobQuery
from tests.support.builders import CLIENT, OTHER_CLIENT, append, create, new_job, queued_event


async def create_for(store: Store, service: Service, created_at: float) -> Job:
    job = new_job(OTHER_CLIENT, created_at=created_at).replace(services=(service,))
    stored, _ = await store.create_job(job, queued_event(job), enqueue=False)
    return stored


async def ids(store: Store, query: JobQuery) -> list[str]:
    jobs, token = await store.find_jobs(query, limit=100)
    assert token == ""
    return [j.job_id for j in jobs]


async def test_an_empty_query_finds_every_clients_jobs_newest_first(store: Store) -> None:
    mine = await create(store, CLIENT, created_at=10.0)
    theirs = await create(store, OTHER_CLIENT, created_at=20.0)

    assert await ids(store, JobQuery()) == [theirs.job_id, mine.job_id]


async def test_a_client_finds_only_its_jobs(store: Store) -> None:
    mine = await create(store, CLIENT, created_at=10.0)
    await create(store, OTHER_CLIENT, created_at=20.0)

    assert await ids(store, JobQuery(client=CLIENT)) == [mine.job_id]
    assert await ids(store, JobQuery(client="nobody")) == []


async def test_services_match_a_jobs_first_service(store: Store) -> None:
    esign = await create_for(store, Service.ESIGN, 1.0)
    postal = await create_for(store, Service.POSTAL, 2.0)
    await create(store, created_at=3.0)  # file, then email

    assert await ids(store, JobQuery(services=frozenset({Service.ESIGN}))) == [esign.job_id]
    both = JobQuery(services=frozenset({Service.ESIGN, Service.POSTAL}))
    assert await ids(store, both) == [postal.job_id, esign.job_id]
    assert await ids(store, JobQuery(services=frozenset({Service.EMAIL}))) == []


async def test_states_match_the_jobs_state_now(store: Store) -> None:
    failed = await create(store, created_at=1.0)
    await append(store, failed, states.FAILED)
    queued = await create(store, created_at=2.0)

    assert await ids(store, JobQuery(states=frozenset({JobState.FAILED}))) == [failed.job_id]
    assert await ids(store, JobQuery(states=frozenset({JobState.QUEUED}))) == [queued.job_id]


async def test_creation_time_is_from_inclusive_to_before_exclusive(store: Store) -> None:
    jobs = [await create(store, created_at=t) for t in (10.0, 20.0, 30.0)]

    window = JobQuery(created_from=20.0, created_before=30.0)
    assert await ids(store, window) == [jobs[1].job_id]
    assert await ids(store, JobQuery(created_from=20.0)) == [jobs[2].job_id, jobs[1].job_id]
    assert await ids(store, JobQuery(created_before=20.0)) == [jobs[0].job_id]


async def test_pages_cover_every_match_once_and_the_last_has_no_token(store: Store) -> None:
    times = [100.0, 101.0, 101.0, 102.0, 103.0, 103.0, 104.0]
    jobs = [await create(store, created_at=t) for t in times]
    for t in (100.5, 101.5, 102.5):
        await create_for(store, Service.ESIGN, t)
    query = JobQuery(services=frozenset({Service.FILE}))

    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = await store.find_jobs(query, limit=3, page_token=token)
        pages.append([j.job_id for j in page])
        if not token:
            break

    expected = [j.job_id for j in sorted(jobs, key=lambda j: (j.created_at, j.job_id))][::-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == expected


async def test_found_jobs_read_as_get_job_reads_them(store: Store) -> None:
    job = await create(store, created_at=5.0)
    await append(store, job, "letter_created")

    [found], _ = await store.find_jobs(JobQuery(), limit=10)

    assert found == await store.get_job(job.job_id)
