"""Replay-then-live streams over the in-memory store: no gap, no repeat, bounded memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import NotFound, ShuttingDown, SlowConsumer
from dispatcher_gateway.core.eventdata import MAX_DEPTH, data_problem
from dispatcher_gateway.core.model import JSON, EventFilter, JobEvent
from dispatcher_gateway.core.records import REPLAY_PAGE

from ..support.core import Harness, gateway_harness, take


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with gateway_harness() as harness:
        yield harness


async def test_subscribe_replays_then_follows_with_no_gap_and_no_repeat(harness: Harness) -> None:
    jobs = [await harness.job() for _ in range(10)]
    stream = harness.gateway.streams.subscribe("anonymous", "", EventFilter())

    async def writer() -> None:
        for i, job_id in enumerate(jobs):
            await harness.webhook(job_id, "dispatch_completed", f"wh-{i}")

    reader = asyncio.create_task(take(stream, 20))
    await writer()
    events = await reader
    assert [int(e.cursor) for e in events] == sorted({int(e.cursor) for e in events})
    assert sum(e.type == "dispatch_completed" for e in events) == 10


async def test_resume_after_a_cursor_skips_what_was_seen(harness: Harness) -> None:
    for _ in range(3):
        await harness.job()
    first = await take(harness.gateway.streams.subscribe("anonymous", "", EventFilter()), 3)
    await harness.job()
    rest = await take(
        harness.gateway.streams.subscribe("anonymous", first[1].cursor, EventFilter()), 2
    )
    assert rest[0].cursor == first[2].cursor
    assert int(rest[1].cursor) > int(first[2].cursor)


async def test_streams_show_only_the_callers_jobs(harness: Harness) -> None:
    await harness.job("someone-else")
    mine = await harness.job("me")
    events = await take(harness.gateway.streams.subscribe("me", "", EventFilter()), 1)
    assert [e.job_id for e in events] == [mine]
    with pytest.raises(NotFound):
        await harness.gateway.reads.get_job("me", (await harness.job("someone-else")))


async def test_watch_ends_after_the_terminal_event(harness: Harness) -> None:
    job_id = await harness.job()
    await harness.webhook(job_id, "dispatch_completed", "wh-1")
    async with asyncio.timeout(5):
        events = [e async for e in harness.gateway.streams.watch("anonymous", job_id)]
    assert [e.type for e in events] == ["queued", "dispatch_completed"]


async def test_duplicate_webhook_is_one_event(harness: Harness) -> None:
    job_id = await harness.job()
    outcomes = await asyncio.gather(
        *(harness.webhook(job_id, "dispatch_completed", "same") for _ in range(5))
    )
    assert sorted(outcomes) == [False, False, False, False, True]


async def test_slow_subscriber_is_ended_not_buffered_forever(harness: Harness) -> None:
    job_id = await harness.job()
    stream = harness.gateway.streams.subscribe("anonymous", "", EventFilter())
    await take(stream, 1)  # caught up; now live, and then it stops reading
    for i in range(80):  # more than the backlog of 50
        await harness.webhook(job_id, f"progress_{i}", f"wh-{i}")
    await asyncio.sleep(0.2)
    with pytest.raises(SlowConsumer):
        await take(stream, 1000)
    assert harness.hub.streams == 0


async def test_drain_ends_streams_with_a_resumable_error(harness: Harness) -> None:
    await harness.job()
    stream = harness.gateway.streams.subscribe("anonymous", "", EventFilter())
    await take(stream, 1)
    harness.hub.close()
    with pytest.raises(ShuttingDown):
        await take(stream, 1)


async def test_drain_ends_a_stream_still_replaying_the_store(harness: Harness) -> None:
    # A client resuming from far back is still reading the store when the drain begins: it is
    # ended then, with where to resume, not after the rest of its history (which may outlast
    # the drain's grace, and be cut without a word).
    job_id = await harness.job()
    for i in range(REPLAY_PAGE + 10):
        await harness.webhook(job_id, f"progress_{i}", f"wh-{i}")
    stream = harness.gateway.streams.subscribe("anonymous", "", EventFilter())
    await take(stream, 2)
    harness.hub.close()
    with pytest.raises(ShuttingDown):
        await take(stream, 1)


async def test_a_client_that_goes_away_leaves_nothing_behind(harness: Harness) -> None:
    await harness.job()
    stream = harness.gateway.streams.subscribe("anonymous", "", EventFilter())
    await take(stream, 1)
    assert harness.hub.streams == 1
    await stream.aclose()  # type: ignore[attr-defined]  # what grpc does when the client leaves
    assert harness.hub.streams == 0


async def test_an_event_a_lagging_replica_does_not_return_yet_still_reaches_a_new_stream(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NATS may answer the replay from a follower a few ms behind the replica the hub's tail
    # reads: an event the hub delivered just before the stream subscribed is then in neither.
    job_id = await harness.job()
    await harness.webhook(job_id, "dispatch_completed", "wh-1")
    store = harness.store
    async with asyncio.timeout(5):
        while not harness.hub.recent("anonymous", 0):
            await asyncio.sleep(0.01)
    [queued, completed] = await store.read_events(client="anonymous")
    read_events = store.read_events

    async def behind(**kwargs: object) -> list[JobEvent]:
        events = await read_events(**kwargs)  # type: ignore[arg-type]
        return [e for e in events if int(e.cursor) < int(completed.cursor)]

    monkeypatch.setattr(store, "read_events", behind)
    events = await take(harness.gateway.streams.subscribe("anonymous", "", EventFilter()), 2)
    assert [e.cursor for e in events] == [queued.cursor, completed.cursor]
    async with asyncio.timeout(5):
        watched = [e async for e in harness.gateway.streams.watch("anonymous", job_id)]
    assert [e.type for e in watched] == ["queued", "dispatch_completed"]


async def store_undecodable(harness: Harness, job_id: str, event_type: str) -> JobEvent:
    """An event whose data no client could decode, appended the way webhooks were recorded
    before record_webhook refused such data."""
    data: JSON = {"leaf": 1}
    for _ in range(MAX_DEPTH):
        data = {"k": data}
    job = await harness.gateway.reads.get_job("anonymous", job_id)
    event = JobEvent(
        job_id=job_id,
        client=job.client,
        service=job.service,
        type=event_type,
        state=states.state_for(event_type),
        data=data,
        metadata=job.metadata,
        event_time=0.0,
    )
    stored = await harness.store.append_event(event, dedupe_key=None, apply=states.apply_event)
    assert stored is not None
    return stored


def assert_stands_in_for(sent: JobEvent, stored: JobEvent) -> None:
    assert sent.type == states.UNDELIVERABLE
    assert sent.data["original_type"] == stored.type
    assert "nests deeper than" in sent.data["error"]
    assert (sent.cursor, sent.job_id, sent.state, sent.terminal) == (
        stored.cursor,
        stored.job_id,
        stored.state,
        stored.terminal,
    )
    assert data_problem(sent.data) is None


async def test_a_replayed_event_no_client_could_decode_is_sent_as_an_error_and_the_stream_goes_on(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await harness.job()
    poisoned = await store_undecodable(harness, job_id, "letter_in_transit")
    await harness.webhook(job_id, "dispatch_completed", "wh-after")

    with caplog.at_level(logging.ERROR, logger="dispatcher_gateway.core"):
        events = await take(harness.gateway.streams.subscribe("anonymous", "", EventFilter()), 3)

    assert [e.type for e in events] == ["queued", states.UNDELIVERABLE, "dispatch_completed"]
    assert_stands_in_for(events[1], poisoned)
    assert any(poisoned.cursor in r.getMessage() for r in caplog.records)
    # A subscriber resuming from just before it meets the same stand-in, not a broken stream.
    again = await take(
        harness.gateway.streams.subscribe("anonymous", events[0].cursor, EventFilter()), 2
    )
    assert [e.type for e in again] == [states.UNDELIVERABLE, "dispatch_completed"]


async def test_a_live_event_no_client_could_decode_is_sent_as_an_error(harness: Harness) -> None:
    job_id = await harness.job()
    stream = harness.gateway.streams.subscribe("anonymous", "", EventFilter())
    await take(stream, 1)  # caught up: what follows comes live

    poisoned = await store_undecodable(harness, job_id, "letter_in_transit")
    await harness.webhook(job_id, "dispatch_completed", "wh-after")

    events = await take(stream, 2)
    assert [e.type for e in events] == [states.UNDELIVERABLE, "dispatch_completed"]
    assert_stands_in_for(events[0], poisoned)


async def test_watch_ends_at_an_undecodable_terminal_event_sent_as_an_error(
    harness: Harness,
) -> None:
    job_id = await harness.job()
    poisoned = await store_undecodable(harness, job_id, "document_signed")
    assert poisoned.terminal

    async with asyncio.timeout(5):
        events = [e async for e in harness.gateway.streams.watch("anonymous", job_id)]

    assert [e.type for e in events] == ["queued", states.UNDELIVERABLE]
    assert_stands_in_for(events[1], poisoned)
