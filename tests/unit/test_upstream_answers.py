"""What the upstream answers is kept only as far as every client can be sent it: a sync answer,
a 202 or an error body nested too deeply, or holding a number no double holds, is replaced by a
small marker when it is recorded, so that GetJob and ListJobs of its job never fail (the answer
of a sync job is its result, its error body the job's error details)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.core.eventdata import MAX_DEPTH, MAX_VALUES
from dispatcher_gateway.core.model import (
    JSON,
    DispatchSpec,
    Job,
    JobState,
    Mode,
    Service,
    UpstreamFailure,
)
from dispatcher_gateway.core.ports import UpstreamAnswer
from dispatcher_gateway.rpc.convert import failure_to_pb, job_to_pb

from ..support.core import Harness, gateway_harness
from ..support.upstream import ScriptedUpstream

SYNC_EMAIL = DispatchSpec((Service.EMAIL,), Mode.SYNC, {"template": {"id": 1, "data": {}}})
MARK = "undeliverable, not kept"


def nested(depth: int) -> JSON:
    data: JSON = {"leaf": "x"}
    for _ in range(depth - 1):
        data = {"k": data}
    return data


UNREADABLE: list[Any] = [
    pytest.param(nested(MAX_DEPTH + 10), id="deep"),
    pytest.param(nested(900), id="deeper-than-python-recurses"),
    pytest.param({"n": 10**400}, id="integer-beyond-a-double"),
    pytest.param({"n": float("inf")}, id="1e400"),
    pytest.param({"n": float("nan")}, id="NaN"),
    pytest.param({"many": list(range(MAX_VALUES + 1))}, id="too-many-values"),
    pytest.param({"s": ["ok", "\ud800"]}, id="lone-surrogate"),
    pytest.param({"\udfff": 1}, id="lone-surrogate-key"),
]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with gateway_harness() as harness:
        yield harness


def scripted(harness: Harness) -> ScriptedUpstream:
    upstream = harness.upstream
    assert isinstance(upstream, ScriptedUpstream)
    return upstream


def assert_sent_as_clients_read(*messages: Message) -> None:
    """What GetJob and ListJobs send decodes, and has a JSON form (grpcurl, the JSON mapping)."""
    for message in messages:
        assert type(message).FromString(message.SerializeToString()) == message
        json_format.MessageToJson(message)


def assert_readable(job: Job) -> None:
    assert_sent_as_clients_read(job_to_pb(job), pb.ListJobsResponse(jobs=[job_to_pb(job)]))


@pytest.mark.parametrize("result", UNREADABLE)
async def test_a_sync_answer_no_client_could_read_becomes_a_marker_result(
    harness: Harness, result: JSON
) -> None:
    scripted(harness).script.append({"dispatchId": "disp_7", "status": "completed", "r": result})

    answered = await harness.gateway.dispatches.submit("anonymous", SYNC_EMAIL, budget=10.0)

    stored = await harness.gateway.reads.get_job("anonymous", answered.job_id)
    for job in (answered, stored):
        assert (job.state, job.dispatch_id) == (JobState.SUCCEEDED, "disp_7")
        assert job.result is not None
        assert list(job.result) == ["error"]
        assert job.result["error"].startswith("the upstream's answer ")
        assert job.result["error"].endswith(MARK)
        assert_readable(job)


async def test_a_sync_answer_every_client_can_read_is_kept_as_it_came(harness: Harness) -> None:
    answer = {"dispatchId": "disp_7", "status": "completed", "r": nested(MAX_DEPTH - 2)}
    scripted(harness).script.append(answer)

    job = await harness.gateway.dispatches.submit("anonymous", SYNC_EMAIL, budget=10.0)

    assert job.result == answer
    assert_readable(await harness.gateway.reads.get_job("anonymous", job.job_id))


@pytest.mark.parametrize("details", UNREADABLE)
async def test_an_error_body_no_client_could_read_becomes_a_marker(
    harness: Harness, details: JSON
) -> None:
    failure = UpstreamFailure("invalid_field", "the template is invalid", 400, {"d": details})
    scripted(harness).script.append(UpstreamError(failure, retryable=False))

    with pytest.raises(UpstreamError) as raised:
        await harness.gateway.dispatches.submit("anonymous", SYNC_EMAIL, budget=10.0)

    [job], _ = await harness.store.list_jobs("anonymous", limit=1)
    assert job.state is JobState.FAILED
    for kept in (raised.value.failure, job.error):
        assert kept is not None
        assert (kept.code, kept.message, kept.http_status) == (
            "invalid_field",
            "the template is invalid",
            400,
        )
        assert list(kept.details) == ["error"]
        assert kept.details["error"].endswith(MARK)
        assert_sent_as_clients_read(failure_to_pb(kept))
    assert_readable(job)


@pytest.mark.parametrize("body", UNREADABLE[:1])
async def test_an_acceptance_no_client_could_read_keeps_its_dispatch(
    harness: Harness, body: JSON
) -> None:
    job = await harness.gateway.reads.get_job("anonymous", await harness.job())

    await harness.gateway.records.submitted(
        job, UpstreamAnswer({"dispatchId": "disp_9", "b": body}, None)
    )

    [_, event] = await harness.store.read_events(client="anonymous", job_id=job.job_id)
    assert event.dispatch_id == "disp_9"
    assert list(event.data) == ["error"]
    assert (await harness.gateway.reads.get_job("anonymous", job.job_id)).dispatch_id == "disp_9"


@pytest.mark.parametrize("answer", UNREADABLE[:1])
async def test_a_validation_answer_no_client_could_read_becomes_a_marker(
    harness: Harness, answer: JSON, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def validate(spec: DispatchSpec, *, timeout: float) -> JSON:
        return {"valid": True, "a": answer}

    monkeypatch.setattr(scripted(harness), "validate", validate)

    kept = await harness.gateway.dispatches.validate(SYNC_EMAIL)

    assert list(kept) == ["error"]


async def test_a_dispatch_id_no_client_could_read_is_not_kept(harness: Harness) -> None:
    job = await harness.gateway.reads.get_job("anonymous", await harness.job())

    await harness.gateway.records.submitted(job, UpstreamAnswer({"dispatchId": "d\ud800"}, None))

    [_, event] = await harness.store.read_events(client="anonymous", job_id=job.job_id)
    assert event.dispatch_id == ""
    assert list(event.data) == ["error"]
    stored = await harness.gateway.reads.get_job("anonymous", job.job_id)
    assert stored.dispatch_id == ""
    assert_readable(stored)
