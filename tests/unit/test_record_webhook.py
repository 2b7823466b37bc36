"""WebhookRecorder.record_webhook over the in-memory store: what it refuses before the 200, so
that nothing it accepts can fail to reach a client, and what binds a webhook to its job."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import InvalidArgument, NotFound
from dispatcher_gateway.core.eventdata import MAX_DEPTH
from dispatcher_gateway.core.model import JSON, JobEvent, JobState, Mode, Service, UpstreamAttempt
from dispatcher_gateway.rpc.convert import event_to_pb

from ..support.core import TOKENS, Harness, gateway_harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with gateway_harness() as harness:
        yield harness


def nested(depth: int) -> JSON:
    data: JSON = {"leaf": "x"}
    for _ in range(depth - 1):
        data = {"k": data}
    return data


async def stored_types(harness: Harness, job_id: str) -> list[str]:
    events = await harness.store.read_events(client="anonymous", job_id=job_id)
    return [e.type for e in events]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 34, 600, 5000])
async def test_data_nested_beyond_the_limit_is_refused_and_nothing_is_stored(
    harness: Harness, depth: int
) -> None:
    job_id = await harness.job()

    with pytest.raises(InvalidArgument, match="data: nests deeper than"):
        await harness.webhook(job_id, "document_signed", "wh-deep", data=nested(depth))

    assert await stored_types(harness, job_id) == ["queued"]
    # Refused, not remembered: the same id with data that can be delivered is recorded.
    assert await harness.webhook(job_id, "document_signed", "wh-deep", data={"ok": True})


async def test_data_that_is_not_an_object_is_measured_as_stored(harness: Harness) -> None:
    job_id = await harness.job()
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]

    with pytest.raises(InvalidArgument):
        await harness.gateway.webhooks.record_webhook(
            TOKENS.token(job_id), {"event": "x", "data": deep}, webhook_id="wh-list"
        )


async def test_a_number_json_parses_as_an_infinity_is_refused(harness: Harness) -> None:
    job_id = await harness.job()
    envelope = json.loads('{"event": "signer_signed", "data": {"n": [1e400]}}')

    with pytest.raises(InvalidArgument, match="data: holds a number too large for a double"):
        await harness.gateway.webhooks.record_webhook(
            TOKENS.token(job_id), envelope, webhook_id="wh-inf"
        )

    assert await stored_types(harness, job_id) == ["queued"]


@pytest.mark.parametrize("event", sorted(states.OWN_EVENTS))
async def test_an_event_type_the_gateway_records_itself_is_refused(
    harness: Harness, event: str
) -> None:
    job_id = await harness.job()

    with pytest.raises(InvalidArgument, match="is an event the gateway records itself"):
        await harness.webhook(job_id, event, "wh-own", data={"time": {"not": "a time"}})

    assert await stored_types(harness, job_id) == ["queued"]


async def test_an_upstream_attempt_recorded_from_a_webhook_before_is_left_out(
    harness: Harness,
) -> None:
    # Found by tests/fuzz: a webhook named upstream_attempt, with data that is no attempt, made
    # every GetJob of its job INTERNAL. Such records may be in a store from before the refusal.
    job_id = await harness.job()
    job = await harness.gateway.reads.get_job("anonymous", job_id)
    good = UpstreamAttempt(time.time(), "POST /api/email", Mode.SYNC, 200, 0.01, "req_1")
    await harness.gateway.records.attempt(job, good)
    for forged in ({"time": {"not": "a time"}}, {"time": 1e300}, {"mode": "x"}, {"latency": -1}):
        event = JobEvent(
            job_id, "anonymous", Service.EMAIL, states.ATTEMPT, JobState.QUEUED, forged, {}, 0.0
        )
        await harness.store.append_event(event, dedupe_key=None, apply=states.apply_event)

    assert await harness.gateway.reads.attempts(job) == [good]


async def test_the_deepest_webhook_accepted_reaches_a_client_intact(harness: Harness) -> None:
    job_id = await harness.job()
    data = nested(MAX_DEPTH)

    assert await harness.webhook(job_id, "document_signed", "wh-deepest", data=data)

    [_, event] = await harness.store.read_events(client="anonymous", job_id=job_id)
    decoded = pb.JobEvent.FromString(event_to_pb(event).SerializeToString())
    assert json_format.MessageToDict(decoded.data) == data


@pytest.mark.parametrize(
    "stamp",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "not a time", "2026-13-01"],
)
async def test_a_time_no_client_could_read_is_replaced_by_the_arrival(
    harness: Harness, stamp: str
) -> None:
    # Found by tests/fuzz: year 0 or 10000 in UTC made an event every JSON client refuses.
    job_id = await harness.job()
    before = time.time()

    assert await harness.webhook(job_id, "signer_signed", "wh-1", timestamp=stamp)

    [_, event] = await harness.store.read_events(client="anonymous", job_id=job_id)
    assert before <= event.event_time <= time.time()
    json_format.MessageToJson(event_to_pb(event))


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("2026-02-13T12:30:00Z", 1770985800.0),
        ("2026-02-13T12:30:00", 1770985800.0),
        ("2026-02-13T13:30:00+01:00", 1770985800.0),
        ("0001-01-01T00:00:00Z", -62135596800.0),
    ],
)
async def test_the_webhooks_own_time_is_kept_a_time_without_zone_in_utc(
    harness: Harness, stamp: str, seconds: float
) -> None:
    job_id = await harness.job()

    assert await harness.webhook(job_id, "signer_signed", "wh-1", timestamp=stamp)

    [_, event] = await harness.store.read_events(client="anonymous", job_id=job_id)
    assert event.event_time == seconds


async def test_a_webhook_naming_another_dispatch_is_not_found_and_not_stored(
    harness: Harness,
) -> None:
    job_id = await harness.job()
    assert await harness.webhook(job_id, "signer_signed", "wh-1", dispatchId="disp_mine")

    with pytest.raises(NotFound):
        await harness.webhook(job_id, "document_signed", "wh-2", dispatchId="disp_other")

    assert await stored_types(harness, job_id) == ["queued", "signer_signed"]
    job = await harness.gateway.reads.get_job("anonymous", job_id)
    assert (job.state, job.dispatch_id) == (JobState.IN_PROGRESS, "disp_mine")


async def test_a_webhook_naming_the_jobs_dispatch_or_none_is_recorded(harness: Harness) -> None:
    job_id = await harness.job()
    assert await harness.webhook(job_id, "signer_signed", "wh-1", dispatchId="disp_mine")

    assert await harness.webhook(job_id, "signer_signed", "wh-2")
    assert await harness.webhook(job_id, "document_signed", "wh-3", dispatchId="disp_mine")

    assert await stored_types(harness, job_id) == [
        "queued",
        *["signer_signed"] * 2,
        "document_signed",
    ]


async def test_a_webhook_before_the_202_gives_the_job_its_dispatch(harness: Harness) -> None:
    job_id = await harness.job()
    assert (await harness.gateway.reads.get_job("anonymous", job_id)).dispatch_id == ""

    assert await harness.webhook(job_id, "signer_signed", "wh-1", dispatchId="disp_early")

    assert (await harness.gateway.reads.get_job("anonymous", job_id)).dispatch_id == "disp_early"


async def test_dispatch_completed_from_a_provider_with_its_own_ends_does_not_end_the_job(
    harness: Harness,
) -> None:
    """The async-flow recipe's `dispatch_completed`, should it come for a provider that sends its
    own ends (Universign, Signaturit, MySendingBox): the signature request reached the provider,
    as a sync answer says, not a signed document. The provider's end ends the job."""
    job_id = await harness.job()
    assert await harness.webhook(job_id, "dispatch_completed", "wh-1", provider="universign")
    assert await harness.webhook(job_id, "transaction_failed", "wh-2", provider="universign")

    events = await harness.store.read_events(client="anonymous", job_id=job_id)
    assert [(e.type, e.state, e.terminal) for e in events] == [
        ("queued", JobState.QUEUED, False),
        ("dispatch_completed", JobState.IN_PROGRESS, False),
        ("transaction_failed", JobState.FAILED, True),
    ]


async def test_dispatch_completed_from_a_provider_without_webhooks_ends_the_job(
    harness: Harness,
) -> None:
    job_id = await harness.job()
    assert await harness.webhook(job_id, "dispatch_completed", "wh-1", provider="yousign")

    events = await harness.store.read_events(client="anonymous", job_id=job_id)
    assert [(e.type, e.state, e.terminal) for e in events][-1] == (
        "dispatch_completed",
        JobState.SUCCEEDED,
        True,
    )
