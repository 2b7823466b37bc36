"""The hub's streams that lag while their readers take events hold webhooks back a moment
(core/hub.py); a reader that stopped, or that stays behind on its own, holds nobody up and is
ended at the backlog, as before.

The time limits are set far out of reach unless a test is about one of them, so that a stalled
machine cannot make a wait end by its timeout where the test expects it to end otherwise; each
wait has an outer limit that fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import time

import pytest

from dispatcher_gateway.core import hub as hub_module
from dispatcher_gateway.core.errors import ShuttingDown, SlowConsumer
from dispatcher_gateway.core.hub import LAG_HIGH, LAG_LOW, EventHub, Subscription
from dispatcher_gateway.core.model import JobEvent, JobState, Service

CLIENT = "svc"
FAR = 3600.0
"""Seconds: a limit no test reaches."""
OUTER = 10.0
"""Seconds a test waits for what it expects before failing."""


@pytest.fixture(autouse=True)
def limits_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PAUSE_MAX", "READING", "HOLD_MAX"):
        monkeypatch.setattr(hub_module, name, FAR)


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


async def reading_behind(hub: EventHub) -> Subscription:
    """A new stream whose reader took its first event and found LAG_HIGH + 9 queued behind it."""
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 10)
    await read(sub, 1)
    return sub


async def catch_up(sub: Subscription, waiting: asyncio.Task[bool], to: int) -> None:
    """Take events one a turn of the loop, as a gRPC stream does, down to `to` queued; the
    waiting webhook must not go on before."""
    while len(sub.queue) > to:
        assert not waiting.done()
        await sub.get()
        await asyncio.sleep(0)


async def test_a_stream_under_the_high_mark_holds_nothing_back() -> None:
    hub = EventHub()
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH)
    await read(sub, 1)  # LAG_HIGH - 1 left behind it
    assert not hub.lagging
    assert await hub.yield_to_streams() is False


async def test_a_webhook_waits_while_a_reading_stream_catches_up() -> None:
    hub = EventHub()
    sub = await reading_behind(hub)
    assert hub.lagging

    async with asyncio.timeout(OUTER):
        waiting = asyncio.create_task(hub.yield_to_streams())
        await catch_up(sub, waiting, LAG_LOW)
        assert await waiting is True
    assert not hub.lagging
    assert len(sub.queue) == LAG_LOW


async def test_a_stream_whose_reader_stopped_holds_nobody_up_and_is_ended() -> None:
    hub = EventHub(backlog=LAG_HIGH * 2)
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 10)  # its reader took none of them
    assert not hub.lagging
    assert await hub.yield_to_streams() is False

    fill(hub, LAG_HIGH, start=LAG_HIGH + 11)
    with pytest.raises(SlowConsumer):
        await sub.get()
    assert hub.streams == 0


async def test_a_reader_that_stops_while_behind_delays_a_webhook_at_most_pause_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "PAUSE_MAX", 0.05)
    hub = EventHub()
    await reading_behind(hub)  # then it reads no more
    begun = time.monotonic()
    async with asyncio.timeout(OUTER):
        assert await hub.yield_to_streams() is True  # it waited, and went on
    assert time.monotonic() - begun >= 0.05

    monkeypatch.setattr(hub_module, "READING", 0.0)  # its last take is now too long ago
    assert await hub.yield_to_streams() is False
    assert not hub.lagging  # left on its own


async def test_a_stopped_stream_does_not_keep_a_webhook_waiting_for_another_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "READING", 60.0)
    hub = EventHub()
    stopped = hub.subscribe(CLIENT, lambda e: True)
    reading = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 10)
    await read(stopped, 1)
    await read(reading, 1)
    stopped.taken -= 120.0  # its reader's last take, long ago
    async with asyncio.timeout(OUTER):
        waiting = asyncio.create_task(hub.yield_to_streams())
        await catch_up(reading, waiting, LAG_LOW)
        assert await waiting is True  # released by the reading one, not by PAUSE_MAX
    assert not hub.lagging


async def test_a_stream_still_behind_after_hold_max_is_left_on_its_own_until_it_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = EventHub()
    sub = await reading_behind(hub)
    assert hub.lagging
    monkeypatch.setattr(hub_module, "HOLD_MAX", 0.0)  # it has held webhooks long enough
    assert await hub.yield_to_streams() is False
    assert not hub.lagging
    await read(sub, 5)  # still LAG_HIGH behind: on its own, it holds nothing back
    assert not hub.lagging

    monkeypatch.setattr(hub_module, "HOLD_MAX", FAR)
    await read(sub, len(sub.queue) - LAG_LOW)  # caught up: a new lag holds webhooks again
    fill(hub, LAG_HIGH, start=LAG_HIGH + 11)
    await read(sub, 1)
    assert hub.lagging


async def test_a_lagging_stream_that_goes_away_or_is_drained_releases_the_webhooks() -> None:
    hub = EventHub()
    gone = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 2)
    await read(gone, 1)
    async with asyncio.timeout(OUTER):
        waiting = asyncio.create_task(hub.yield_to_streams())
        await asyncio.sleep(0)
        hub.unsubscribe(gone)  # its client left
        assert await waiting is True
    assert not hub.lagging

    kept = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, LAG_HIGH + 2, start=LAG_HIGH + 3)
    await read(kept, 1)
    async with asyncio.timeout(OUTER):
        waiting = asyncio.create_task(hub.yield_to_streams())
        await asyncio.sleep(0)
        hub.close()  # drain
        assert await waiting is True
    assert not hub.lagging
    with pytest.raises(ShuttingDown):
        await kept.get()


async def test_a_small_backlog_scales_the_marks_down() -> None:
    hub = EventHub(backlog=50)  # half of it: 25 behind holds webhooks, 5 releases them
    sub = hub.subscribe(CLIENT, lambda e: True)
    fill(hub, 26)
    await read(sub, 1)
    assert hub.lagging
    async with asyncio.timeout(OUTER):
        waiting = asyncio.create_task(hub.yield_to_streams())
        await catch_up(sub, waiting, 5)
        assert await waiting is True
    assert len(sub.queue) == 5
