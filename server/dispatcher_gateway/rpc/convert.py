"""Translation between the public protobuf messages and the domain, and request validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from dispatcher.gateway.v1 import gateway_pb2 as pb

from ..core.errors import FieldViolation, InvalidArgument
from ..core.model import (
    JSON,
    DispatchSpec,
    EventFilter,
    Job,
    JobEvent,
    JobState,
    Mode,
    Priority,
    QueueEstimate,
    Service,
    UpstreamAttempt,
    UpstreamFailure,
)
from ..core.records import EARLIEST_EVENT_TIME as EARLIEST_TIME
from ..core.records import END_OF_EVENT_TIMES as END_OF_TIMES
from .options import BLOCKS, TYPED_OPTIONS, Violations

MAX_NANOS = 999_999_999
MAX_INT32 = 2**31 - 1
MAX_IDEMPOTENCY_KEY = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_LENGTH = 512
"""Characters in one metadata key or value."""
MAX_JOB_ID = 128
"""Characters of a job id in a request: the gateway's are 36; longer is refused unread (and
never echoed back: a message that large would not fit in the status)."""
MAX_PAGE_TOKEN = 512
"""Characters of a page token: the gateway's are about 100."""
MAX_FILTER_JOB_IDS = 1000

GATEWAY_OWNED_FIELDS = frozenset(
    {
        # Where the upstream calls back, and whether it does: the gateway's alone.
        "webhookUrl",
        "callbackUrl",
        "webhook",
        "callback",
        "async",
        # What identifies the request upstream (the job id is its idempotency key).
        "idempotencyKey",
        "requestId",
        "dispatchId",
        # The account and its credentials.
        "accountId",
        "userId",
        "companyId",
        "apiKey",
        "authorization",
        "credentials",
    }
)
"""Top-level upstream body fields a caller's `extra` may not carry, in any mode: they route,
authenticate or identify the request, and the gateway owns them. Compared ignoring case, `_` and
`-`, as a lenient upstream parser might."""

_SERVICE_TO_PB = {s: pb.Service.Value(f"SERVICE_{s.name}") for s in Service}
_SERVICE_FROM_PB = {v: k for k, v in _SERVICE_TO_PB.items()}
_STATE_TO_PB = {s: pb.JobState.Value(f"JOB_STATE_{s.name}") for s in JobState}
_MODE_TO_PB = {Mode.ASYNC: pb.MODE_ASYNC, Mode.SYNC: pb.MODE_SYNC}
_PRIORITY_TO_PB = {p: pb.Priority.Value(f"PRIORITY_{p.name}") for p in Priority}
_PRIORITY_FROM_PB: dict[int, Priority] = {
    **{v: k for k, v in _PRIORITY_TO_PB.items()},
    pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
}


def service_to_pb(service: Service) -> pb.Service.ValueType:
    return _SERVICE_TO_PB[service]


def service_from_pb(value: int) -> Service | None:
    return _SERVICE_FROM_PB.get(value)  # type: ignore[call-overload,no-any-return]


def struct_to_dict(message: struct_pb2.Struct) -> JSON:
    if not message.fields:
        # Most requests carry no template data: json_format costs ~4 us even for nothing.
        return {}
    return json_format.MessageToDict(message)


def dict_to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        # What JSON parsing gives (dict, list, str, number, bool, None), as json_format.ParseDict
        # would write it, in less than half the time.
        struct.update(data)
    return struct


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    _set_time(stamp, seconds)
    return stamp


def time_of(stamp: timestamp_pb2.Timestamp) -> float:
    """Seconds since the epoch."""
    return stamp.seconds + stamp.nanos / 1e9


def start_time_of(req: pb.SubscribeRequest) -> float | None:
    """Subscribe's start_time, if given: a time RFC 3339 writes (years 1-9999), or
    InvalidArgument."""
    if not req.HasField("start_time"):
        return None
    when = time_of(req.start_time)
    if not EARLIEST_TIME <= when < END_OF_TIMES or not 0 <= req.start_time.nanos <= MAX_NANOS:
        raise InvalidArgument([FieldViolation("start_time", "not a time in years 1 to 9999")])
    return when


def _set_time(stamp: timestamp_pb2.Timestamp, seconds: float) -> None:
    # Floored, not truncated: a Timestamp's nanos are never negative, even before 1970.
    whole = math.floor(seconds)
    stamp.seconds, stamp.nanos = whole, min(int((seconds - whole) * 1e9), MAX_NANOS)


_METADATA_COUNT = f"at most {MAX_METADATA_ENTRIES} entries"
_METADATA_LENGTH = f"keys 1-{MAX_METADATA_LENGTH} characters, values at most as long"
_IDEMPOTENCY_KEY_LENGTH = f"at most {MAX_IDEMPOTENCY_KEY} characters"
_MODES = {pb.MODE_UNSPECIFIED: Mode.ASYNC, pb.MODE_ASYNC: Mode.ASYNC, pb.MODE_SYNC: Mode.SYNC}


def spec_from_request(req: pb.DispatchRequest) -> DispatchSpec:
    """The validated domain request, or InvalidArgument listing every problem at once.

    On every Dispatch, so written for speed: messages are read once, and the text of a
    violation is only built when there is one."""
    v = Violations()
    services: list[Service] = []
    first = _SERVICE_FROM_PB.get(req.service)
    if first is None:
        v.add("service", "required: one of SERVICE_EMAIL, SERVICE_SMS, ... (not UNSPECIFIED)")
    else:
        services.append(first)
    for i, value in enumerate(req.chain):
        chained = _SERVICE_FROM_PB.get(value)
        if chained is None:
            v.add(f"chain[{i}]", "unknown or unspecified service")
        else:
            services.append(chained)
    if len(services) > 1 and len(set(services)) != len(services):
        v.add("chain", "a service may appear only once in a chain")
    mode = _MODES.get(req.mode)
    if mode is None:
        v.add("mode", "unknown mode")
        mode = Mode.ASYNC

    body: JSON = _struct_field(req.extra, "extra", v) if req.HasField("extra") else {}
    for key in body:
        if _normalized(key) in _OWNED:
            v.add(f"extra.{key[:64]}", "set by the gateway; not accepted in extra")
    if req.provider_name:
        body["providerName"] = req.provider_name
    template = req.template
    template_id = template.id
    v.require(template_id > 0, "template.id", "required: a positive template id")
    body["template"] = {"id": template_id, "data": _struct_field(template.data, "template.data", v)}
    for service in services:
        if service not in BLOCKS:
            continue
        name, build = BLOCKS[service]
        if req.HasField(name):  # type: ignore[arg-type]
            body[name] = build(req, v)
        elif name not in body:
            v.add(name, f"required for SERVICE_{service.name} (typed options, or in `extra`)")
    for service, name in TYPED_OPTIONS:
        if service not in services and req.HasField(name):  # type: ignore[arg-type]
            v.add(name, f"given, but SERVICE_{service.name} is not in the request's services")
    if req.HasField("invoicing") and req.invoicing.document_type:
        body["documentType"] = req.invoicing.document_type

    metadata = dict(req.metadata)
    if metadata:
        v.require(len(metadata) <= MAX_METADATA_ENTRIES, "metadata", _METADATA_COUNT)
        for key, text in metadata.items():
            if not key or len(key) > MAX_METADATA_LENGTH or len(text) > MAX_METADATA_LENGTH:
                v.add(f"metadata[{key[:40]}]", _METADATA_LENGTH)
        body["metadata"] = metadata
    idempotency_key = req.idempotency_key
    v.require(
        len(idempotency_key) <= MAX_IDEMPOTENCY_KEY, "idempotency_key", _IDEMPOTENCY_KEY_LENGTH
    )
    priority = _PRIORITY_FROM_PB.get(req.priority)
    if priority is None:
        v.add("priority", "unknown priority")
    not_before = 0.0
    if req.HasField("not_before"):
        not_before = time_of(req.not_before)
        v.require(not_before > 0, "not_before", "must be after 1970-01-01T00:00:00Z")
        v.require(mode is Mode.ASYNC, "not_before", "MODE_ASYNC only: a sync call sends at once")
    if v.items:
        raise v.error()
    return DispatchSpec(
        tuple(services),
        mode,
        body,
        metadata,
        idempotency_key,
        priority=priority or Priority.NORMAL,
        not_before=not_before,
    )


def _struct_field(message: struct_pb2.Struct, field: str, v: Violations) -> JSON:
    try:
        return struct_to_dict(message)
    except ValueError:
        # NaN and the infinities: a Struct holds them, the JSON body sent upstream cannot.
        v.add(field, "holds NaN or an infinite number, which JSON cannot carry")
        return {}


def _normalized(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


_OWNED = frozenset(_normalized(f) for f in GATEWAY_OWNED_FIELDS)


def check_job_id(job_id: str, field: str = "job_id") -> None:
    if len(job_id) > MAX_JOB_ID:
        raise InvalidArgument([FieldViolation(field, f"at most {MAX_JOB_ID} characters")])


def check_page_token(page_token: str) -> None:
    if len(page_token) > MAX_PAGE_TOKEN:
        raise InvalidArgument([FieldViolation("page_token", "is not a token this server issued")])


def filter_from_request(req: pb.SubscribeRequest) -> EventFilter:
    v = Violations()
    v.require(
        len(req.job_ids) <= MAX_FILTER_JOB_IDS, "job_ids", f"at most {MAX_FILTER_JOB_IDS} ids"
    )
    for i, job_id in enumerate(req.job_ids[:MAX_FILTER_JOB_IDS]):
        v.require(len(job_id) <= MAX_JOB_ID, f"job_ids[{i}]", f"at most {MAX_JOB_ID} characters")
    metadata = req.metadata
    v.require(len(metadata) <= MAX_METADATA_ENTRIES, "metadata", _METADATA_COUNT)
    for key, text in list(metadata.items())[:MAX_METADATA_ENTRIES]:
        if len(key) > MAX_METADATA_LENGTH or len(text) > MAX_METADATA_LENGTH:
            v.add(f"metadata[{key[:40]}]", _METADATA_LENGTH)
    services = set()
    for i, value in enumerate(req.services):
        service = service_from_pb(value)
        if service is None:
            v.add(f"services[{i}]", "unknown or unspecified service")
        else:
            services.add(service)
    if v.items:
        raise v.error()
    return EventFilter(frozenset(req.job_ids), frozenset(services), dict(req.metadata))


def failure_to_pb(failure: UpstreamFailure) -> pb.UpstreamError:
    status = failure.http_status
    return pb.UpstreamError(
        code=failure.code,
        message=failure.message,
        # A job's error recorded from a webhook before states.failure_from checked it may hold
        # any number there: one an int32 cannot hold would make every read of the job fail.
        http_status=status if 0 <= status <= MAX_INT32 else 0,
        details=dict_to_struct(failure.details),
    )


def job_to_pb(job: Job) -> pb.Job:
    message = pb.Job()
    fill_job(message, job)
    return message


def fill_job(message: pb.Job, job: Job) -> None:
    """Write `job` into an empty `message`, such as a response's own field: on every Dispatch,
    so fields are set in place (a message built from keywords, then copied into its parent,
    costs about three times as much) and those left empty are not set at all."""
    message.job_id = job.job_id
    if job.dispatch_id:
        message.dispatch_id = job.dispatch_id
    services = job.services
    message.service = _SERVICE_TO_PB[services[0]]
    if len(services) > 1:
        message.chain.extend([_SERVICE_TO_PB[s] for s in services[1:]])
    message.mode = _MODE_TO_PB[job.mode]
    message.state = _STATE_TO_PB[job.state]
    provider_name = str(job.body.get("providerName", ""))
    if provider_name:
        message.provider_name = provider_name
    message.template_id = int(job.body.get("template", {}).get("id", 0))
    if job.metadata:
        message.metadata.update(job.metadata)
    if job.idempotency_key:
        message.idempotency_key = job.idempotency_key
    if job.last_event:
        message.last_event = job.last_event
    message.priority = _PRIORITY_TO_PB[job.priority]
    _set_time(message.create_time, job.created_at)
    _set_time(message.update_time, job.updated_at)
    if job.result is not None:
        message.result.CopyFrom(dict_to_struct(job.result))
    if job.error is not None:
        message.error.CopyFrom(failure_to_pb(job.error))
    if job.not_before:
        _set_time(message.not_before, job.not_before)
    if job.retry_of:
        message.retry_of = job.retry_of
    if job.retried_by:
        message.retried_by = job.retried_by


def fill_estimate(message: pb.QueueEstimate, estimate: QueueEstimate) -> None:
    message.jobs_ahead = estimate.jobs_ahead
    _set_time(message.expected_submit_time, estimate.expected_submit_time)


def event_to_pb(event: JobEvent) -> pb.JobEvent:
    message = pb.JobEvent(
        cursor=event.cursor,
        job_id=event.job_id,
        dispatch_id=event.dispatch_id,
        service=service_to_pb(event.service),
        type=event.type,
        state=_STATE_TO_PB[event.state],
        metadata=dict(event.metadata),
        event_time=timestamp(event.event_time),
        record_time=timestamp(event.record_time),
        terminal=event.terminal,
    )
    if event.data:
        message.data.update(event.data)  # in place: no Struct built, then copied
    return message


def attempt_to_pb(attempt: UpstreamAttempt) -> pb.UpstreamAttempt:
    message = pb.UpstreamAttempt(
        endpoint=attempt.endpoint,
        mode=_MODE_TO_PB[attempt.mode],
        http_status=attempt.http_status,
        request_id=attempt.request_id,
        error_code=attempt.error_code,
    )
    _set_time(message.attempt_time, attempt.time)
    message.latency.FromNanoseconds(round(attempt.latency * 1e9))
    return message


def template_to_pb(data: Mapping[str, Any]) -> pb.TemplateInfo:
    services = data.get("services") or []
    return pb.TemplateInfo(
        id=int(data.get("id", 0)),
        name=str(data.get("name", "")),
        description=str(data.get("description", "")),
        services=[str(s) for s in services] if isinstance(services, list) else [],
    )
