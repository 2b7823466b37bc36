"""Job.replace and JobEvent.replace: what dataclasses.replace does, faster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dispatcher_gateway.core.model import Job, JobEvent, JobState, Mode, Service, UpstreamFailure

JOB = Job(
    job_id="job_1",
    client="anonymous",
    services=(Service.POSTAL,),
    mode=Mode.ASYNC,
    state=JobState.QUEUED,
    body={"to": "x"},
    metadata={"order": "42"},
    idempotency_key="",
    request_hash="h",
    created_at=1.0,
    updated_at=1.0,
)
EVENT = JobEvent(
    job_id="job_1",
    client="anonymous",
    service=Service.POSTAL,
    type="letter_in_transit",
    state=JobState.IN_PROGRESS,
    data={"seq": 1},
    metadata={},
    event_time=2.0,
)


def test_a_replaced_job_equals_what_dataclasses_replace_makes() -> None:
    changes: dict[str, Any] = {
        "state": JobState.FAILED,
        "error": UpstreamFailure("c", "m"),
        "updated_at": 5.0,
    }

    replaced = JOB.replace(**changes)

    assert replaced == dataclasses.replace(JOB, **changes)
    assert replaced is not JOB
    assert JOB.state is JobState.QUEUED


def test_a_replaced_event_equals_what_dataclasses_replace_makes() -> None:
    replaced = EVENT.replace(cursor="7", record_time=3.0)

    assert replaced == dataclasses.replace(EVENT, cursor="7", record_time=3.0)
    assert (EVENT.cursor, EVENT.record_time) == ("", 0.0)


def test_replace_with_no_changes_is_an_equal_copy() -> None:
    assert EVENT.replace() == EVENT


def test_replace_refuses_a_field_that_does_not_exist() -> None:
    with pytest.raises(TypeError, match="cursour"):
        EVENT.replace(cursour="7")
    with pytest.raises(TypeError):
        JOB.replace(nope=1)


def test_a_replaced_object_stays_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVENT.replace(cursor="7").cursor = "8"  # type: ignore[misc]
