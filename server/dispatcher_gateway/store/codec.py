"""What every store backend writes the same way: jobs and events as JSON, cursors, page tokens,
and the constants of the contract they share.

A job or an event is stored as the JSON object `job_to_json` / `event_to_json` give (the NATS
backend stores it as it is; the SQLite backend spreads its keys over a row's columns), so adding
a field to `Job` or `JobEvent` is one change here. The decoders read what the backends of the
previous release wrote, which is the same objects.
"""

from __future__ import annotations

import base64
import enum
import json
import json.encoder
from typing import Any, Final, TypeVar

from ..core.errors import FieldViolation, InvalidArgument
from ..core.model import (
    JSON,
    Job,
    JobEvent,
    JobState,
    Mode,
    Priority,
    Service,
    UpstreamFailure,
    cursor_value,
)

DEFAULT_DEDUPE_TTL: Final = 72 * 3600.0
"""How long an append's dedupe key is remembered: the contract's "at least 72 h"."""
SECRET_BYTES: Final = 32
JOB_STATE_FIELDS: Final = (
    "state",
    "updated_at",
    "dispatch_id",
    "result",
    "error",
    "last_event",
    "retried_by",
)
"""What an event may change of its job (see `Apply`); the request (client, services, mode, body,
metadata, idempotency key and hash, retry_of) and the creation time are fixed when the job is
created. `submit_begun_at` is set by `Store.begin_submission` alone."""


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_MAKE_ENCODER: Final[Any] = getattr(json.encoder, "c_make_encoder", None)
_ENCODE: Final[Any] = _MAKE_ENCODER and _MAKE_ENCODER(
    None, _COMPACT.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
)
"""What `_COMPACT.encode` builds at each call, built once: a C encoder of compact JSON, ASCII
only, NaN allowed, no check for circular references (what the stores encode was decoded from
JSON or built of such values, none of which holds itself). It keeps no state between calls:
any thread may use it."""


def dumps(value: Any) -> str:
    """Compact JSON, as every backend stores it: json.dumps(value, separators=(",", ":"))."""
    if _ENCODE is None:
        return _COMPACT.encode(value)
    return "".join(_ENCODE(value, 0))


E = TypeVar("E", Service, Mode, JobState, Priority)

_MEMBERS: Final[dict[type[enum.Enum], dict[Any, Any]]] = {
    kind: {m.value: m for m in kind} for kind in (Service, Mode, JobState, Priority)
}


def member(kind: type[E], value: Any) -> E:
    """`kind(value)`, its member of that value (ValueError if none), looked up in a table rather
    than by calling the enum class, which costs several times as much."""
    try:
        found: E = _MEMBERS[kind][value]
    except (KeyError, TypeError):  # TypeError: unhashable, which no member is
        return kind(value)
    return found


# Jobs and events


def job_to_json(job: Job) -> JSON:
    data = {
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
    # Only when traced: an untraced job is written as the previous release wrote it.
    if job.trace_context:
        data["trace_context"] = job.trace_context
    if job.priority is not Priority.NORMAL:
        data["priority"] = job.priority.value
    if job.not_before:
        data["not_before"] = job.not_before
    if job.submit_begun_at:
        data["submit_begun_at"] = job.submit_begun_at
    if job.retry_of:
        data["retry_of"] = job.retry_of
    if job.retried_by:
        data["retried_by"] = job.retried_by
    return data


def job_from_json(data: JSON) -> Job:
    return Job(
        job_id=data["job_id"],
        client=data["client"],
        services=tuple(member(Service, s) for s in data["services"]),
        mode=member(Mode, data["mode"]),
        state=member(JobState, data["state"]),
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
        # Absent from what the previous release wrote.
        trace_context=data.get("trace_context") or "",
        priority=member(Priority, data.get("priority") or Priority.NORMAL.value),
        not_before=float(data.get("not_before") or 0.0),
        submit_begun_at=data.get("submit_begun_at") or 0.0,
        retry_of=data.get("retry_of") or "",
        retried_by=data.get("retried_by") or "",
    )


def event_to_json(event: JobEvent) -> JSON:
    """The event without its cursor, which is where the backend stored it (a row's sequence
    number, a stream message's)."""
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
        service=member(Service, data["service"]),
        type=data["type"],
        state=member(JobState, data["state"]),
        data=data["data"],
        metadata=data["metadata"],
        event_time=data["event_time"],
        dispatch_id=data["dispatch_id"],
        terminal=bool(data["terminal"]),
        cursor=cursor,
        record_time=data["record_time"],
    )


# Cursors


def parse_cursor(cursor: str) -> int:
    """The sequence number a cursor stands for, 0 for '' ("before the first event"). Every
    backend's cursor is the decimal string of an event's sequence number; the rule of what is one
    is core's (`cursor_value`), the rule the gateway checks clients' cursors with."""
    value = cursor_value(cursor)
    if value is None:
        raise InvalidArgument([FieldViolation("cursor", "is not a cursor this server issued")])
    return value


# Page tokens


def page_start(limit: int, page_token: str) -> tuple[float, str] | None:
    """list_jobs' arguments checked: where its page starts, after (created_at, job_id) of the
    last job of the page before, or None for the first page."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return decode_page_token(page_token) if page_token else None


def encode_page_token(last: Job) -> str:
    """The token of the page after `last`: where list_jobs (newest first) resumes."""
    raw = dumps([last.created_at, last.job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def page_of(jobs: list[Job], limit: int) -> tuple[list[Job], str]:
    """A page from the jobs read for it, newest first, up to one more than `limit`: the first
    `limit`, with the next page's token when there was one more."""
    if len(jobs) <= limit:
        return jobs, ""
    return jobs[:limit], encode_page_token(jobs[limit - 1])


def decode_page_token(token: str) -> tuple[float, str]:
    """(created_at, job_id) of the last job of the page before. Reads the tokens of the previous
    release too: base64 (SQLite) and hex (NATS) of the same JSON pair. A base64 token never reads
    as hex, as its first character is 'W' (the JSON's '['), which hex does not use. Anything else
    is InvalidArgument."""
    for decode in (_from_base64, bytes.fromhex):
        try:
            created_at, job_id = json.loads(decode(token))
            if isinstance(created_at, int | float) and isinstance(job_id, str):
                return float(created_at), job_id
        # OverflowError: an integer no float holds.
        except (ValueError, TypeError, RecursionError, OverflowError):
            pass
    raise InvalidArgument([FieldViolation("page_token", "is not a token this server issued")])


def _from_base64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.encode())
