"""The domain: jobs, their events and states. No gRPC, HTTP or SQL here."""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

JSON = dict[str, Any]
_Slotted = TypeVar("_Slotted", "Job", "JobEvent")

MAX_CURSOR = 2**63 - 1
"""Cursors fit a signed 64-bit integer (SQLite's INTEGER, JetStream's sequence)."""


def cursor_value(cursor: str) -> int | None:
    """The sequence number a cursor stands for: 0 for '' ("before the first event"), None for
    what is not a cursor. Cursors are opaque to clients; every store makes them the decimal
    string of a sequence number. The one rule, for core's checks of clients' cursors and for the
    stores. (str.isdigit alone would let through digits such as '²', which int() refuses.)"""
    if not cursor:
        return 0
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= len(str(MAX_CURSOR))):
        return None
    value = int(cursor)
    return value if value <= MAX_CURSOR else None


class Service(enum.StrEnum):
    """An upstream service, named as in the upstream's URL path."""

    EMAIL = "email"
    SMS = "sms"
    POSTAL = "postal"
    ESIGN = "esign"
    INVOICING = "invoicing"
    FILE = "file"
    UPLOAD = "upload"


class Mode(enum.StrEnum):
    ASYNC = "async"
    SYNC = "sync"


class Priority(enum.StrEnum):
    """How soon a job goes out among its own client's queued jobs (clients share the rate by
    weight whatever their jobs' priorities)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Sending order within a client: 0 first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    """Withdrawn by its client before its submission upstream began (core/control.py)."""

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)

    @property
    def rank(self) -> int:
        """Progress order: a job never moves to a lower rank."""
        return _STATE_RANK[self]


_STATE_RANK = {
    JobState.QUEUED: 0,
    JobState.SUBMITTED: 1,
    JobState.IN_PROGRESS: 2,
    JobState.SUCCEEDED: 3,
    JobState.FAILED: 3,
    JobState.CANCELED: 3,
}


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """What the upstream answered when it refused or failed a dispatch (or what we gave up with)."""

    code: str
    message: str
    http_status: int = 0
    details: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "code": self.code,
            "message": self.message,
            "http_status": self.http_status,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpstreamFailure:
        return cls(
            code=str(data.get("code", "")),
            message=str(data.get("message", "")),
            http_status=int(data.get("http_status", 0)),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True, slots=True)
class UpstreamAttempt:
    """One request the gateway sent upstream for a job, as an operator quotes it to Dispatcher's
    support: recorded as an event of the job (`states.ATTEMPT`), whatever it was answered."""

    time: float
    """When it was sent (seconds since the epoch)."""
    endpoint: str
    """Method and path, such as `POST /api/esign`."""
    mode: Mode
    """How it was sent: async (with the callback URL) or sync (the answer is the result)."""
    http_status: int
    """0 when no answer came (timeout, connection refused)."""
    latency: float
    """Seconds from sending to the answer, or to giving up on one."""
    request_id: str
    """The X-Request-ID the upstream answered with (the one sent, when it echoed none)."""
    error_code: str = ""
    """The upstream's error code, or the gateway's own (upstream_timeout, ...); empty on 2xx."""

    def to_json(self) -> JSON:
        return {
            "time": self.time,
            "endpoint": self.endpoint,
            "mode": self.mode.value,
            "http_status": self.http_status,
            "latency": self.latency,
            "request_id": self.request_id,
            "error_code": self.error_code,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpstreamAttempt:
        return cls(
            time=float(data.get("time", 0.0)),
            endpoint=str(data.get("endpoint", "")),
            mode=Mode(data.get("mode", Mode.ASYNC.value)),
            http_status=int(data.get("http_status", 0)),
            latency=float(data.get("latency", 0.0)),
            request_id=str(data.get("request_id", "")),
            error_code=str(data.get("error_code", "")),
        )


@dataclass(frozen=True, slots=True)
class DispatchSpec:
    """A validated dispatch request, as the upstream will receive it."""

    services: tuple[Service, ...]
    mode: Mode
    body: JSON
    """The upstream's request body (CompositeRequest), without the callback URL."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    priority: Priority = Priority.NORMAL
    """Not part of the request's fingerprint: it says when to send, not what."""
    not_before: float = 0.0
    """Not sent upstream before this time (seconds since the epoch); 0: as soon as it can."""

    @property
    def service(self) -> Service:
        return self.services[0]

    @property
    def provider(self) -> str:
        """The provider the request names ('' for the account's default)."""
        return str(self.body.get("providerName") or "")

    @property
    def path(self) -> str:
        """The upstream path: /api/file/email for a chain."""
        return "/api/" + "/".join(s.value for s in self.services)

    def fingerprint(self) -> str:
        """A stable hash of everything that makes two requests the same request."""
        request: JSON = {
            "services": [s.value for s in self.services],
            "mode": self.mode.value,
            "body": self.body,
            "metadata": dict(self.metadata),
        }
        # Only when set: a request without it hashes as it did before it existed.
        if self.not_before:
            request["not_before"] = self.not_before
        canonical = json.dumps(
            request,
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    client: str
    services: tuple[Service, ...]
    mode: Mode
    state: JobState
    body: JSON
    metadata: Mapping[str, str]
    idempotency_key: str
    request_hash: str
    """The request's fingerprint, to tell a reused idempotency key's request from another:
    empty when the job has no key."""
    created_at: float
    updated_at: float
    dispatch_id: str = ""
    result: JSON | None = None
    error: UpstreamFailure | None = None
    last_event: str = ""
    trace_context: str = ""
    """The W3C `traceparent` of the call that made the job, kept so that its upstream request
    continues that trace and its webhooks link to it; opaque here, empty when not traced."""
    priority: Priority = Priority.NORMAL
    not_before: float = 0.0
    """Not sent upstream before this time (seconds since the epoch); 0: as soon as it can."""
    submit_begun_at: float = 0.0
    """When its submission upstream began (the outbox's claim, or the sync call's create); 0
    while none has: only then can the job be canceled. Set once, never cleared."""
    retry_of: str = ""
    """The failed job this one sends again (RetryJob); fixed at the create."""
    retried_by: str = ""
    """The job RetryJob made to send this failed one again; set by its `retried` event."""

    @property
    def service(self) -> Service:
        return self.services[0]

    def replace(self, **changes: Any) -> Job:
        return _replaced(self, changes)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a job. `cursor` and `record_time` are set by the store when it is appended."""

    job_id: str
    client: str
    service: Service
    type: str
    state: JobState
    data: JSON
    metadata: Mapping[str, str]
    event_time: float
    dispatch_id: str = ""
    terminal: bool = False
    cursor: str = ""
    record_time: float = 0.0

    def replace(self, **changes: Any) -> JobEvent:
        return _replaced(self, changes)


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _replaced(obj: _Slotted, changes: dict[str, Any]) -> _Slotted:
    """`dataclasses.replace` for a frozen dataclass with slots and nothing run at init (no
    __post_init__, no InitVar), without its per-call walk over the fields' definitions: the
    store replaces an event four times and its job once for each webhook."""
    cls = type(obj)
    names: tuple[str, ...] = cls.__slots__
    fields = _FIELD_NAMES.get(cls)
    if fields is None:
        fields = _FIELD_NAMES[cls] = frozenset(names)
    if not fields.issuperset(changes):
        unknown = sorted(changes.keys() - fields)
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    new = object.__new__(cls)
    for name in names:
        object.__setattr__(new, name, getattr(obj, name))
    for name, value in changes.items():
        object.__setattr__(new, name, value)
    return new


@dataclass(frozen=True, slots=True)
class Lease:
    """An outbox entry handed to one worker until acked, retried, or its visibility runs out."""

    job_id: str
    attempts: int
    """Submissions tried before this one."""
    handle: Any = None
    """The backend's own reference to the leased entry."""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Outbox entries of one client at one priority."""

    fresh: int
    """Never handed out: the jobs a newly queued job has ahead of it."""
    other: int = 0
    """Handed out before: leased now, or waiting for a retry or for a callback deadline."""


@dataclass(frozen=True, slots=True)
class QueueEstimate:
    """Where a newly queued job stands (rough: core/fairshare.py says how)."""

    jobs_ahead: int
    """Jobs of the same client sent before it (higher priority, or the same and queued
    earlier)."""
    expected_submit_time: float
    """Seconds since the epoch."""

    def to_json(self) -> JSON:
        """As the "queued" event's data carries it: the time in RFC 3339, as protobuf's JSON
        form writes a Timestamp."""
        return {
            "jobs_ahead": self.jobs_ahead,
            "expected_submit_time": rfc3339_millis(self.expected_submit_time),
        }


_LAST_SECOND = 253402300799
"""9999-12-31T23:59:59Z, the last second datetime writes."""


def rfc3339_millis(when: float) -> str:
    """`when` (seconds since the epoch) in UTC to the millisecond with a Z, exactly as
    datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds") writes it (rounded to
    the microsecond half to even, then cut to the millisecond); each second's date and time
    formatted once, for this is written for every Dispatch."""
    if not 0 <= when < _LAST_SECOND:
        moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    fraction, whole = math.modf(when)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_utc_second(int(whole))}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def _utc_second(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a Subscribe stream wants; empty fields match everything."""

    job_ids: frozenset[str] = frozenset()
    services: frozenset[Service] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def matches(self, event: JobEvent) -> bool:
        if self.job_ids and event.job_id not in self.job_ids:
            return False
        if self.services and event.service not in self.services:
            return False
        return all(event.metadata.get(k) == v for k, v in self.metadata.items())
