"""A queued event's estimate writes its time (core/model.py's rfc3339_millis) exactly as
datetime's isoformat to the millisecond would, without building a datetime for each."""

from __future__ import annotations

import datetime
import random

from dispatcher_gateway.core.model import QueueEstimate, rfc3339_millis

EDGES = (
    0.0,
    0.0004995,
    0.9995,
    0.9999995,
    0.99999949,
    1_700_000_000.0005,
    1_700_000_000.9999996,
    253_402_300_799.0,
    253_402_300_799.9999,
    -1.25,
    253_402_300_798.9999996,
)


def datetime_form(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_every_time_is_written_as_datetime_writes_it() -> None:
    draw = random.Random(15)
    times = list(EDGES)
    for _ in range(20_000):
        whole = draw.randrange(0, 4_000_000_000)
        times.append(whole + draw.choice((0.0005, 0.9995, 0.9999995, 0.5, draw.random())))
    assert [t for t in times if rfc3339_millis(t) != datetime_form(t)] == []


def test_the_estimate_carries_the_time_in_that_form() -> None:
    estimate = QueueEstimate(3, 1_700_000_000.25)
    assert estimate.to_json() == {
        "jobs_ahead": 3,
        "expected_submit_time": "2023-11-14T22:13:20.250Z",
    }
