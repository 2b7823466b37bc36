"""The limits on an event's data, and the reason for them: the deepest and largest data accepted
still reaches a client through protobuf, one level more does not."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core.eventdata import MAX_DEPTH, MAX_VALUES, data_problem
from dispatcher_gateway.core.model import JSON, Job, JobEvent, JobState, Mode, Service
from dispatcher_gateway.rpc.convert import event_to_pb, job_to_pb
from dispatcher_gateway.webhooks import DEFAULT_MAX_BODY

PROTOBUF_DEPTH_LIMIT = 100
"""The default recursion limit of the C++, Java, C# and upb (Python) protobuf parsers."""
GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
"""Bytes of one message a gRPC client accepts unless told otherwise."""


def nested(depth: int) -> JSON:
    """Objects nested `depth` levels, the costliest shape in protobuf (3 levels per object)."""
    data: JSON = {"leaf": "x"}
    for _ in range(depth - 1):
        data = {"k": data}
    return data


def event_with(data: JSON) -> JobEvent:
    return JobEvent("job_1", "c", Service.ESIGN, "document_signed", JobState.SUCCEEDED, data, {}, 0)


def job_with(result: JSON) -> Job:
    return Job(
        "job_1", "c", (Service.ESIGN,), Mode.ASYNC, JobState.SUCCEEDED, {}, {}, "", "", 0, 0,
        result=result,
    )  # fmt: skip


def test_the_deepest_data_accepted_round_trips_through_a_job_event() -> None:
    data = nested(MAX_DEPTH)
    assert data_problem(data) is None

    raw = event_to_pb(event_with(data)).SerializeToString()

    assert json_format.MessageToDict(pb.JobEvent.FromString(raw).data) == data


def test_the_deepest_data_accepted_round_trips_as_a_jobs_result_in_a_list() -> None:
    data = nested(MAX_DEPTH)
    raw = pb.ListJobsResponse(jobs=[job_to_pb(job_with(data))]).SerializeToString()

    assert json_format.MessageToDict(pb.ListJobsResponse.FromString(raw).jobs[0].result) == data


def test_the_depth_leaves_clients_a_quarter_of_the_parsers_levels() -> None:
    # JobEvent → Struct, then per object level: map entry → Value → Struct; the leaf: entry, Value.
    levels = 3 * MAX_DEPTH
    assert PROTOBUF_DEPTH_LIMIT - levels - 1 >= PROTOBUF_DEPTH_LIMIT // 4


def test_data_a_client_cannot_decode_exists_and_is_refused() -> None:
    """The reason for the limit: 34 levels of objects is beyond every client's parser."""
    data = nested(34)
    raw = event_to_pb(event_with(data)).SerializeToString()

    with pytest.raises(DecodeError):
        pb.JobEvent.FromString(raw)
    assert data_problem(data) == f"nests deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("shape", ["object", "array"])
def test_one_level_more_than_the_limit_is_refused(shape: str) -> None:
    inner: object = {"k": 1} if shape == "object" else [1]
    for _ in range(MAX_DEPTH - 2):
        inner = [inner] if shape == "array" else {"k": inner}

    assert data_problem({"deep": inner}) is None
    assert data_problem({"deeper": [inner]}) == f"nests deeper than {MAX_DEPTH} levels"


def test_data_nested_beyond_pythons_recursion_limit_is_measured() -> None:
    data: JSON = {}
    for _ in range(100_000):
        data = {"k": data}

    assert data_problem(data) == f"nests deeper than {MAX_DEPTH} levels"


def test_a_webhook_of_the_largest_size_and_count_accepted_stays_under_grpcs_message_size() -> None:
    data: JSON = {"numbers": [0] * (MAX_VALUES - 2), "text": "x" * DEFAULT_MAX_BODY}
    assert data_problem(data) is None

    assert len(event_to_pb(event_with(data)).SerializeToString()) < GRPC_DEFAULT_MAX_RECEIVE // 2


def test_more_values_than_the_limit_are_refused_however_they_are_spread() -> None:
    wide: JSON = {"numbers": [0] * MAX_VALUES}
    spread: JSON = {f"k{i}": {"a": 1} for i in range(MAX_VALUES // 2 + 1)}

    assert data_problem(wide) == f"holds more than {MAX_VALUES} values"
    assert data_problem(spread) == f"holds more than {MAX_VALUES} values"


def test_an_integer_beyond_a_double_is_refused() -> None:
    assert data_problem({"n": [10**400]}) == "holds an integer too large for a double"
    assert data_problem({"n": 2**64, "b": True, "f": 1e308}) is None


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_a_number_that_is_not_finite_is_refused(number: float) -> None:
    # Found by tests/fuzz: JSON's 1e400 parses as an infinity, which the JSON form of a JobEvent
    # cannot write.
    data: JSON = {"n": [number]}
    with pytest.raises(json_format.SerializeToJsonError):
        json_format.MessageToJson(event_to_pb(event_with(data)))

    assert data_problem(data) == "holds a number too large for a double, or NaN"
    assert data_problem({"n": -1.7976931348623157e308, "tiny": 5e-324}) is None
