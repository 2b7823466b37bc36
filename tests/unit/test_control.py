"""Cancel and retry (core/control.py) on the in-memory store with a scripted upstream: what can
be canceled and what is too late, that a canceled job never reaches the upstream, which failures
a retry may send again, and that a retry is one new job however often it is asked for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.control import not_acted, retry_id
from dispatcher_gateway.core.errors import NotFound, WrongState
from dispatcher_gateway.core.gateway import Gateway
from dispatcher_gateway.core.model import (
    DispatchSpec,
    JobState,
    Mode,
    Service,
    UpstreamFailure,
)
from dispatcher_gateway.core.records import event_of
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import build_core, running_outbox
from ..support.upstream import ScriptedUpstream, failure

WAIT_TIMEOUT = 10.0
CLIENT = "billing"
SPEC = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1}})


@dataclass
class Harness:
    store: MemoryStore
    upstream: ScriptedUpstream
    gateway: Gateway

    async def queue(self, spec: DispatchSpec = SPEC) -> str:
        return (await self.gateway.dispatches.submit(CLIENT, spec, budget=None)).job_id

    async def state(self, job_id: str) -> JobState:
        job = await self.store.get_job(job_id)
        assert job is not None
        return job.state

    async def until(self, condition: Callable[[], Awaitable[bool]]) -> None:
        async with asyncio.timeout(WAIT_TIMEOUT):
            while not await condition():
                await asyncio.sleep(0.01)

    async def ended(self, job_id: str) -> JobState:
        async def done() -> bool:
            return (await self.state(job_id)).terminal

        await self.until(done)
        return await self.state(job_id)

    async def types(self, job_id: str) -> list[str]:
        events = await self.store.read_events(client=CLIENT, job_id=job_id)
        return [e.type for e in events]


@contextlib.asynccontextmanager
async def harness() -> AsyncIterator[Harness]:
    store = MemoryStore()
    await store.open()
    upstream = ScriptedUpstream()
    try:
        yield Harness(store, upstream, build_core(store, upstream))
    finally:
        await store.close()


async def test_a_queued_job_is_canceled_with_a_terminal_event_naming_who() -> None:
    async with harness() as h:
        job_id = await h.queue()

        job = await h.gateway.control.cancel(CLIENT, job_id)

        assert job.state is JobState.CANCELED
        events = await h.store.read_events(client=CLIENT, job_id=job_id)
        last = events[-1]
        assert (last.type, last.state, last.terminal) == ("canceled", JobState.CANCELED, True)
        assert last.data == {"canceled_by": CLIENT}


async def test_a_canceled_job_never_reaches_the_upstream_and_leaves_the_outbox() -> None:
    async with harness() as h:
        job_id = await h.queue()
        await h.gateway.control.cancel(CLIENT, job_id)
        after = await h.queue()

        async with running_outbox(h.gateway):
            assert await h.ended(after) is JobState.SUCCEEDED

        assert h.upstream.keys == [after]
        assert await h.store.lease(limit=10, visibility=60.0) == []


async def test_canceling_a_canceled_job_returns_it() -> None:
    async with harness() as h:
        job_id = await h.queue()
        first = await h.gateway.control.cancel(CLIENT, job_id)

        again = await h.gateway.control.cancel(CLIENT, job_id)

        assert again == first
        assert await h.types(job_id) == ["queued", "canceled"]


async def test_someone_elses_job_is_not_found() -> None:
    async with harness() as h:
        job_id = await h.queue()

        with pytest.raises(NotFound):
            await h.gateway.control.cancel("crm", job_id)
        with pytest.raises(NotFound):
            await h.gateway.control.retry("crm", job_id)
        assert await h.state(job_id) is JobState.QUEUED


async def test_a_job_sent_upstream_is_too_late_to_cancel_naming_its_state() -> None:
    async with harness() as h:
        job_id = await h.queue()
        async with running_outbox(h.gateway):
            await h.ended(job_id)

        with pytest.raises(WrongState, match="has ended \\(succeeded\\): too late to cancel"):
            await h.gateway.control.cancel(CLIENT, job_id)


async def test_a_job_whose_submission_began_is_too_late_to_cancel_while_still_queued() -> None:
    async with harness() as h:
        job_id = await h.queue()
        await h.store.begin_submission(job_id)

        with pytest.raises(WrongState, match="queued and its submission has begun"):
            await h.gateway.control.cancel(CLIENT, job_id)
        assert await h.types(job_id) == ["queued"]


async def test_a_sync_job_is_begun_at_its_create() -> None:
    async with harness() as h:
        spec = DispatchSpec((Service.EMAIL,), Mode.SYNC, {"template": {"id": 1}})
        job = await h.gateway.dispatches.submit(CLIENT, spec, budget=5.0)

        assert job.submit_begun_at > 0
        with pytest.raises(WrongState):
            await h.gateway.control.cancel(CLIENT, job.job_id)


async def test_cancels_racing_the_outbox_end_each_job_once() -> None:
    async with harness() as h:
        jobs = [await h.queue() for _ in range(60)]
        refused = 0

        async def cancel(job_id: str, delay: float) -> None:
            nonlocal refused
            await asyncio.sleep(delay)
            try:
                await h.gateway.control.cancel(CLIENT, job_id)
            except WrongState:
                refused += 1

        async with running_outbox(h.gateway):
            await asyncio.gather(*(cancel(j, (i % 6) * 0.002) for i, j in enumerate(jobs)))
            ends = [await h.ended(j) for j in jobs]

        sent = set(h.upstream.keys)
        for job_id, end in zip(jobs, ends, strict=True):
            assert (end is JobState.CANCELED) != (job_id in sent), job_id
        assert refused == len(sent)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_field"),
        (401, "upstream_credentials_refused"),
        (404, "template_not_found"),
        (417, "provider_error"),
        (422, "unprocessable"),
        (429, "rate_limited"),
        (502, "provider_error"),
        (0, "upstream_circuit_open"),
    ],
)
def test_failures_that_prove_the_upstream_did_not_act_can_be_retried(
    status: int, code: str
) -> None:
    assert not_acted(UpstreamFailure(code, "refused", status)) == ""


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (0, "upstream_timeout", "no answer proves"),
        (0, "upstream_unreachable", "no answer proves"),
        (0, states.OVERDUE, "callback_overdue"),
        (500, "internal_error", "may have acted"),
        (502, "http_502", "without its error body"),
        (503, "service_unavailable", "may have acted"),
        (409, "conflict", "may have acted"),
        (0, "deadline_exceeded", "no answer proves"),
    ],
)
def test_ambiguous_failures_cannot_be_retried(status: int, code: str, reason: str) -> None:
    assert reason in not_acted(UpstreamFailure(code, "failed", status))


async def failed_job(h: Harness, outcome: Exception) -> str:
    h.upstream.script.append(outcome)  # type: ignore[arg-type]
    job_id = await h.queue()
    async with running_outbox(h.gateway):
        assert await h.ended(job_id) is JobState.FAILED
    return job_id


async def test_a_refused_job_is_sent_again_as_a_new_linked_job_under_its_own_key() -> None:
    async with harness() as h:
        old_id = await failed_job(h, failure(417, "provider_error"))

        new = await h.gateway.control.retry(CLIENT, old_id)
        async with running_outbox(h.gateway):
            assert await h.ended(new.job_id) is JobState.SUCCEEDED

        assert (new.job_id, new.retry_of, new.state) == (retry_id(old_id), old_id, JobState.QUEUED)
        assert new.body == SPEC.body
        assert h.upstream.keys == [old_id, new.job_id]
        old = await h.store.get_job(old_id)
        assert old is not None
        assert (old.state, old.retried_by) == (JobState.FAILED, new.job_id)
        events = await h.store.read_events(client=CLIENT, job_id=old_id)
        retried = events[-1]
        assert (retried.type, retried.state, retried.terminal) == (
            "retried",
            JobState.FAILED,
            False,
        )
        assert retried.data == {"retried_by": new.job_id}


async def test_retrying_a_retried_job_returns_the_same_new_job() -> None:
    async with harness() as h:
        old_id = await failed_job(h, failure(400, "invalid_field"))

        made = await asyncio.gather(*(h.gateway.control.retry(CLIENT, old_id) for _ in range(5)))
        again = await h.gateway.control.retry(CLIENT, old_id)

        assert {job.job_id for job in [*made, again]} == {retry_id(old_id)}
        assert (await h.types(old_id)).count("retried") == 1
        assert len(await h.store.lease(limit=10, visibility=60.0)) == 1


async def test_an_ambiguous_failure_is_refused_with_its_reason() -> None:
    async with harness() as h:
        old_id = await h.queue()
        job = await h.store.get_job(old_id)
        assert job is not None
        # As the outbox ends a job whose 500s outlasted its retries.
        await h.gateway.records.fail(job, UpstreamFailure("internal_error", "gave up", 500))

        with pytest.raises(WrongState, match="answered 500 \\(internal_error\\): it may have"):
            await h.gateway.control.retry(CLIENT, old_id)
        old = await h.store.get_job(old_id)
        assert old is not None
        assert old.retried_by == ""


async def test_only_a_failed_job_can_be_retried() -> None:
    async with harness() as h:
        job_id = await h.queue()

        with pytest.raises(WrongState, match="is queued: only a failed job can be retried"):
            await h.gateway.control.retry(CLIENT, job_id)


async def test_a_job_the_upstream_failed_by_webhook_cannot_be_retried() -> None:
    async with harness() as h:
        job_id = await h.queue()
        job = await h.store.get_job(job_id)
        assert job is not None
        event = event_of(job, "letter_failed", {"code": "undeliverable", "http_status": 400}, 1.0)
        await h.store.append_event(event, dedupe_key=None, apply=states.apply_event)

        with pytest.raises(WrongState, match="its 'letter_failed' event: it acted"):
            await h.gateway.control.retry(CLIENT, job_id)


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (failure(0, "upstream_timeout"), failure(401, "unauthorized")),
        (failure(503, "service_unavailable"), failure(403, "forbidden")),
    ],
    ids=["timeout then 401", "503 then 403"],
)
async def test_a_job_refused_after_a_request_that_may_have_acted_cannot_be_retried(
    first: Exception, last: Exception
) -> None:
    """The last answer is a refusal, but an earlier request of the job went unanswered (or was
    answered 5xx): the upstream may have acted on that one, and a retry under a new key would
    then be a second dispatch."""
    async with harness() as h:
        h.upstream.script.append(first)  # type: ignore[arg-type]
        job_id = await failed_job(h, last)

        with pytest.raises(WrongState, match="may have been acted on"):
            await h.gateway.control.retry(CLIENT, job_id)
        assert h.upstream.keys == [job_id, job_id]
        old = await h.store.get_job(job_id)
        assert old is not None
        assert old.retried_by == ""
