"""The hub's streams that lag while their readers take events hold webhooks back a moment
(core/hub.py); a reader that stopped holds nobody up and is ended at the backlog, as before."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher_gateway.core import hub as hub_module
from dispatcher_gateway.core.errors import ShuttingDown, SlowConsumer
from dispatcher_gateway.core.hub import LAG_HIGH, LAG_LOW, EventHub, Subscription
from dispatcher_gateway.core.model import JobEvent, JobState, Service

CLIENT = "svc"


def event(n: int) -> JobEvent:
    return JobEvent(
        job_id="job_1",
        client=CLIENT,
        service=Service.EMAIL,
        type="progress",
        state=JobState.IN_PROGRESS,
        data={},
        metadata={},
        event_time=0.0,
        cursor=str(n),
    )


def fill(hub: EventHub, count: int, start: int = 1) -> None:
    for n in range(start, start + count):
        hub.publish(event(n))


async def read(sub: Subscription, count: int) -> None:
    for _ in range(count):
        await sub.get()


async def test_a_stream_under_the_high_mark_holds_nothing_back() -> None:
    hub = EventHub()
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH - 1)
    await read(sub, 1)
    assert not hub.lagging
    assert await hub.yield_to_streams() is False


async def test_a_webhook_waits_while_a_reading_stream_catches_up() -> None:
    hub = EventHub()
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 10)
    await read(sub, 1)  # its reader is taking events
    assert hub.lagging

    waiting = asyncio.create_task(hub.yield_to_streams())
    await asyncio.sleep(0)
    assert not waiting.done()
    # The reader takes its events one a turn, as a gRPC stream does; the webhook goes on once
    # the stream is back at the low mark, not before.
    while len(sub.queue) > LAG_LOW:
        assert not waiting.done()
        await sub.get()
        await asyncio.sleep(0)
    assert await waiting is True
    assert not hub.lagging
    assert len(sub.queue) == LAG_LOW


async def test_a_stream_whose_reader_stopped_holds_nobody_up_and_is_ended() -> None:
    hub = EventHub(backlog=LAG_HIGH * 2)
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH)  # it took none of them
    assert hub.lagging
    assert await hub.yield_to_streams() is False

    fill(hub, LAG_HIGH + 1, start=LAG_HIGH + 1)
    with pytest.raises(SlowConsumer):
        await sub.get()
    assert not hub.lagging
    assert hub.streams == 0


async def test_a_reader_that_stops_while_behind_delays_a_webhook_at_most_pause_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "PAUSE_MAX", 0.01)
    hub = EventHub()
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 10)
    await read(sub, 1)  # then it reads no more
    assert await hub.yield_to_streams() is True  # it waited, and went on

    monkeypatch.setattr(hub_module, "READING", 0.0)  # its last take is now long ago
    assert await hub.yield_to_streams() is False


async def test_a_lagging_stream_that_goes_away_or_is_drained_releases_the_webhooks() -> None:
    hub = EventHub()
    gone = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 1)
    await read(gone, 1)
    waiting = asyncio.create_task(hub.yield_to_streams())
    await asyncio.sleep(0)
    hub.unsubscribe(gone)  # its client left
    assert await waiting is True
    assert not hub.lagging

    kept = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 1, start=LAG_HIGH + 2)
    await read(kept, 1)
    waiting = asyncio.create_task(hub.yield_to_streams())
    await asyncio.sleep(0)
    hub.close()  # drain
    assert await waiting is True
    assert not hub.lagging
    with pytest.raises(ShuttingDown):
        await kept.get()


async def test_only_the_stream_that_matches_an_event_counts_it() -> None:
    hub = EventHub()
    hub.subscribe(CLIENT, lambda e: False)  # a filter that takes nothing
    other = hub.subscribe("other", lambda e: True)  # another client's stream
    fill(hub, LAG_HIGH * 2)
    assert not hub.lagging
    assert len(other.queue) == 0
