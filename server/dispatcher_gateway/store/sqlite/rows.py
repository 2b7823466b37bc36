"""Jobs and events as rows: the codec's JSON objects spread over columns (the JSON-valued keys
as JSON text), and the statements that write many rows at once."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from ...core.model import Job, JobEvent, JobState, Mode, Priority, Service, UpstreamFailure
from .. import codec

JOB_COLUMNS: Final = [
    "job_id",
    "client",
    "services",
    "mode",
    "state",
    "body",
    "metadata",
    "idempotency_key",
    "request_hash",
    "created_at",
    "updated_at",
    "dispatch_id",
    "result",
    "error",
    "last_event",
    "trace_context",
    "not_before",
    "submit_begun_at",
    "retry_of",
    "retried_by",
    "priority",
]
_JOB_DEFAULTS: Final = {
    "trace_context": "",
    "not_before": 0.0,
    "submit_begun_at": 0.0,
    "retry_of": "",
    "retried_by": "",
    "priority": Priority.NORMAL.value,
}
"""The columns codec.job_to_json leaves out when empty."""
JOB_STATE_COLUMNS: Final = ["job_id", *codec.JOB_STATE_FIELDS]
"""The job id, and what an event may change (in this order in UPDATE_JOBS)."""
EVENT_COLUMNS: Final = [
    "job_id",
    "client",
    "service",
    "type",
    "state",
    "data",
    "metadata",
    "event_time",
    "dispatch_id",
    "terminal",
    "record_time",
]
_JSON_JOB_COLUMNS: Final = ("services", "body", "metadata", "result", "error")
"""The job's columns that hold JSON text (NULL for a None result or error)."""
_JSON_EVENT_COLUMNS: Final = ("data", "metadata")
STATEMENT_TEXTS: Final = 1024
"""Texts kept of each kind of statement built (schema.py's STATEMENT_CACHE: as many)."""

INSERT_JOB: Final = (
    "INSERT INTO jobs (job_id, client, services, mode, state, body, metadata, idempotency_key,"
    " request_hash, created_at, updated_at, dispatch_id, result, error, last_event, trace_context,"
    " not_before, submit_begun_at, retry_of, retried_by, priority)"
    " VALUES (:job_id, :client, :services, :mode, :state, :body, :metadata, :idempotency_key,"
    " :request_hash, :created_at, :updated_at, :dispatch_id, :result, :error, :last_event,"
    " :trace_context, :not_before, :submit_begun_at, :retry_of, :retried_by, :priority)"
)
SELECT_JOBS: Final = (
    "SELECT job_id, client, services, mode, state, body, metadata, idempotency_key,"
    " request_hash, created_at, updated_at, dispatch_id, result, error, last_event, trace_context,"
    " not_before, submit_begun_at, retry_of, retried_by, priority FROM jobs"
)
"""A job's columns in the order of JOB_COLUMNS, the order job_from_row reads them in (a file
made by an older release has its columns in another order: `SELECT *` would read them so)."""
SELECT_JOBS_STATE: Final = SELECT_JOBS.replace(" body,", " '{}' AS body,", 1)
"""The job as `apply` sees it: all but the body, the one column that may be large."""
UPDATE_JOBS: Final = (
    "UPDATE jobs SET state = v.column2, updated_at = v.column3, dispatch_id = v.column4,"
    " result = v.column5, error = v.column6, last_event = v.column7, retried_by = v.column8"
    " FROM (VALUES {rows}) AS v WHERE jobs.job_id = v.column1"
)
"""What an event may change (JOB_STATE_COLUMNS), for many jobs in one statement (UPDATE FROM:
SQLite 3.33 and later)."""


# The statements' texts are built once for each size: every write of the sync path builds a few,
# and a group commit's sizes are few (up to queued.py's MAX_BATCH).


@functools.lru_cache(maxsize=STATEMENT_TEXTS)
def marks(count: int) -> str:
    return ", ".join("?" * count)


@functools.lru_cache(maxsize=STATEMENT_TEXTS)
def _values(width: int, count: int) -> str:
    row = f"({marks(width)})"
    return ", ".join([row] * count)


def values(columns: Sequence[str], count: int) -> str:
    """`count` rows of positional parameters, for a VALUES clause."""
    return _values(len(columns), count)


def insert_many(table: str, columns: Sequence[str], rows: int) -> str:
    """An INSERT of `rows` rows in one statement, positional parameters."""
    return _insert_many(table, tuple(columns), rows)


@functools.lru_cache(maxsize=STATEMENT_TEXTS)
def _insert_many(table: str, columns: tuple[str, ...], rows: int) -> str:
    # The table and columns are this package's constants; the values are parameters.
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values(columns, rows)}"  # noqa: S608


@functools.lru_cache(maxsize=STATEMENT_TEXTS)
def update_jobs(count: int) -> str:
    """UPDATE_JOBS for `count` jobs."""
    return UPDATE_JOBS.format(rows=values(JOB_STATE_COLUMNS, count))


def job_params(job: Job) -> dict[str, Any]:
    params = {**_JOB_DEFAULTS, **codec.job_to_json(job)}
    for column in _JSON_JOB_COLUMNS:
        if params[column] is not None:
            params[column] = codec.dumps(params[column])
    return params


def job_state_values(job: Job) -> tuple[Any, ...]:
    """A job's row in UPDATE_JOBS, by JOB_STATE_COLUMNS: what codec.job_to_json gives for those
    columns, built for them alone (on every append)."""
    return (
        job.job_id,
        job.state.value,
        job.updated_at,
        job.dispatch_id,
        None if job.result is None else codec.dumps(job.result),
        None if job.error is None else codec.dumps(job.error.to_json()),
        job.last_event,
        job.retried_by,
    )


def job_from_row(row: sqlite3.Row) -> Job:
    """What codec.job_from_json gives of the row's columns as a JSON object, read from a row of
    SELECT_JOBS (or SELECT_JOBS_STATE) by position: on every append, for each job appended to,
    where reading 21 columns by name costs more than the rest."""
    (
        job_id,
        client,
        services,
        mode,
        state,
        body,
        metadata,
        idempotency_key,
        request_hash,
        created_at,
        updated_at,
        dispatch_id,
        result,
        error,
        last_event,
        trace_context,
        not_before,
        submit_begun_at,
        retry_of,
        retried_by,
        priority,
    ) = row
    return Job(
        job_id=job_id,
        client=client,
        services=_services(services),
        mode=codec.member(Mode, mode),
        state=codec.member(JobState, state),
        body=_loads(body),
        metadata=_loads(metadata),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=created_at,
        updated_at=updated_at,
        dispatch_id=dispatch_id,
        result=_loads(result),
        error=None if error is None else UpstreamFailure.from_json(json.loads(error)),
        last_event=last_event,
        trace_context=trace_context or "",
        priority=codec.member(Priority, priority or Priority.NORMAL.value),
        not_before=float(not_before or 0.0),
        submit_begun_at=submit_begun_at or 0.0,
        retry_of=retry_of or "",
        retried_by=retried_by or "",
    )


@functools.lru_cache(maxsize=64)
def _services(text: str) -> tuple[Service, ...]:
    """A job's `services` column: a few combinations of a few services, decoded once each."""
    return tuple(Service(s) for s in json.loads(text))


def _loads(text: str | None) -> Any:
    """A JSON column's value; NULL is None. An empty object (most jobs' metadata, the body
    SELECT_JOBS_STATE leaves out) without the decoder, a new dict each time."""
    if text is None:
        return None
    return {} if text == "{}" else json.loads(text)


def event_values(event: JobEvent, record_time: float) -> tuple[Any, ...]:
    """An event's row, by EVENT_COLUMNS: what codec.event_to_json gives for those columns (the
    JSON-valued ones as JSON text), recorded at `record_time`."""
    return (
        event.job_id,
        event.client,
        event.service.value,
        event.type,
        event.state.value,
        codec.dumps(event.data),
        codec.dumps(dict(event.metadata)),
        event.event_time,
        event.dispatch_id,
        int(event.terminal),
        record_time,
    )


def event_from_row(row: sqlite3.Row) -> JobEvent:
    """The event of a row of `events`, its cursor the row's `seq`."""
    data = {column: row[column] for column in EVENT_COLUMNS}
    for column in _JSON_EVENT_COLUMNS:
        data[column] = json.loads(data[column])
    return codec.event_from_json(data, str(row["seq"]))
