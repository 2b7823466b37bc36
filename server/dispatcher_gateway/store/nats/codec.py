"""Jobs and events as the NATS store writes them (JSON), its cursors and its page tokens."""

from __future__ import annotations

import json

from nats.aio.msg import Msg

from ...core.errors import FieldViolation, InvalidArgument
from ...core.model import JSON, Job, JobEvent, JobState, Mode, Service, UpstreamFailure
from .jetstream import dumps


def parse_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    if not cursor.isdecimal():
        raise InvalidArgument([FieldViolation("cursor", "is not a cursor this server issued")])
    return int(cursor)


def encode_page_token(last: Job) -> str:
    return dumps([last.created_at, last.job_id]).hex()


def decode_page_token(token: str) -> tuple[float, str]:
    try:
        created_at, job_id = json.loads(bytes.fromhex(token))
        if isinstance(created_at, int | float) and isinstance(job_id, str):
            return float(created_at), job_id
    except (ValueError, TypeError):
        pass
    raise InvalidArgument([FieldViolation("page_token", "is not a token this server issued")])


def job_to_json(job: Job) -> JSON:
    return {
        "job_id": job.job_id,
        "client": job.client,
        "services": [s.value for s in job.services],
        "mode": job.mode.value,
        "state": job.state.value,
        "body": job.body,
        "metadata": dict(job.metadata),
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "dispatch_id": job.dispatch_id,
        "result": job.result,
        "error": None if job.error is None else job.error.to_json(),
        "last_event": job.last_event,
    }


def job_from_json(data: JSON) -> Job:
    return Job(
        job_id=data["job_id"],
        client=data["client"],
        services=tuple(Service(s) for s in data["services"]),
        mode=Mode(data["mode"]),
        state=JobState(data["state"]),
        body=data["body"],
        metadata=data["metadata"],
        idempotency_key=data["idempotency_key"],
        request_hash=data["request_hash"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        dispatch_id=data["dispatch_id"],
        result=data["result"],
        error=None if data["error"] is None else UpstreamFailure.from_json(data["error"]),
        last_event=data["last_event"],
    )


def event_to_json(event: JobEvent) -> JSON:
    return {
        "job_id": event.job_id,
        "client": event.client,
        "service": event.service.value,
        "type": event.type,
        "state": event.state.value,
        "data": event.data,
        "metadata": dict(event.metadata),
        "event_time": event.event_time,
        "dispatch_id": event.dispatch_id,
        "terminal": event.terminal,
        "record_time": event.record_time,
    }


def event_from_json(data: JSON, cursor: str = "") -> JobEvent:
    return JobEvent(
        job_id=data["job_id"],
        client=data["client"],
        service=Service(data["service"]),
        type=data["type"],
        state=JobState(data["state"]),
        data=data["data"],
        metadata=data["metadata"],
        event_time=data["event_time"],
        dispatch_id=data["dispatch_id"],
        terminal=data["terminal"],
        cursor=cursor,
        record_time=data["record_time"],
    )


def event_to_bytes(event: JobEvent) -> bytes:
    return dumps(event_to_json(event))


def event_from_msg(msg: Msg) -> JobEvent:
    """An event of the events stream; its cursor is the stream sequence."""
    return event_from_json(json.loads(msg.data), str(msg.metadata.sequence.stream))
