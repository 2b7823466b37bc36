"""The codec every backend shares (store/codec.py): it encodes as the backends of the previous
release did, and reads what they stored, taken here as literal payloads: a NATS job envelope and
event message, SQLite rows, both kinds of page token; and the in-memory and SQLite backends
record the same calls alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.errors import InvalidArgument
from dispatcher_gateway.core.model import (
    MAX_CURSOR,
    Job,
    JobEvent,
    JobState,
    Mode,
    Priority,
    QueueDepth,
    Service,
    UpstreamFailure,
    cursor_value,
)
from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.store import MemoryStore, SqliteStore, codec
from dispatcher_gateway.store.sqlite import rows
from tests.support.sqlite_files import version_1_file

JOB = Job(
    job_id="job_0123456789abcdef0123456789abcdef",
    client="billing",
    services=(Service.FILE, Service.EMAIL),
    mode=Mode.ASYNC,
    state=JobState.FAILED,
    body={"email": {"to": ["a@example.com"]}, "count": 3, "unicode": "é"},
    metadata={"tenant": "acme"},
    idempotency_key="order-1",
    request_hash="hash-1",
    created_at=1764000000.25,
    updated_at=1764000100.5,
    dispatch_id="disp-9",
    result={"ok": False},
    error=UpstreamFailure("E_LIMIT", "too many", 429, {"retry": "later"}),
    last_event="letter_failed",
)
QUEUED_JOB = JOB.replace(
    job_id="job_fedcba9876543210fedcba9876543210",
    state=JobState.QUEUED,
    idempotency_key="",
    request_hash="",
    dispatch_id="",
    result=None,
    error=None,
    last_event="",
)
EVENT = JobEvent(
    job_id=JOB.job_id,
    client="billing",
    service=Service.FILE,
    type="letter_failed",
    state=JobState.FAILED,
    data={"reason": "x", "n": [1, 2.5, None]},
    metadata={"tenant": "acme"},
    event_time=1764000099.125,
    dispatch_id="disp-9",
    terminal=True,
    record_time=1764000100.5,
)

# What the previous release's NatsStore wrote for JOB with EVENT pending (the jobs bucket), and
# for EVENT (the events stream's message).
NATS_ENVELOPE = (
    b'{"job":{"job_id":"job_0123456789abcdef0123456789abcdef","client":"billing",'
    b'"services":["file","email"],"mode":"async","state":"failed","body":{"email":{"to":'
    b'["a@example.com"]},"count":3,"unicode":"\\u00e9"},"metadata":{"tenant":"acme"},'
    b'"idempotency_key":"order-1","request_hash":"hash-1","created_at":1764000000.25,'
    b'"updated_at":1764000100.5,"dispatch_id":"disp-9","result":{"ok":false},"error":'
    b'{"code":"E_LIMIT","message":"too many","http_status":429,"details":{"retry":"later"}},'
    b'"last_event":"letter_failed"},"pending":[{"id":"k-abc","event":{"job_id":'
    b'"job_0123456789abcdef0123456789abcdef","client":"billing","service":"file","type":'
    b'"letter_failed","state":"failed","data":{"reason":"x","n":[1,2.5,null]},"metadata":'
    b'{"tenant":"acme"},"event_time":1764000099.125,"dispatch_id":"disp-9","terminal":true,'
    b'"record_time":1764000100.5}}],"enqueue":true}'
)
NATS_EVENT = (
    b'{"job_id":"job_0123456789abcdef0123456789abcdef","client":"billing","service":"file",'
    b'"type":"letter_failed","state":"failed","data":{"reason":"x","n":[1,2.5,null]},'
    b'"metadata":{"tenant":"acme"},"event_time":1764000099.125,"dispatch_id":"disp-9",'
    b'"terminal":true,"record_time":1764000100.5}'
)

# What the previous release's SqliteStore wrote for JOB, QUEUED_JOB and EVENT.
SQLITE_JOBS = [
    (
        "job_0123456789abcdef0123456789abcdef",
        "billing",
        '["file","email"]',
        "async",
        "failed",
        '{"email":{"to":["a@example.com"]},"count":3,"unicode":"\\u00e9"}',
        '{"tenant":"acme"}',
        "order-1",
        "hash-1",
        1764000000.25,
        1764000100.5,
        "disp-9",
        '{"ok":false}',
        '{"code":"E_LIMIT","message":"too many","http_status":429,"details":{"retry":"later"}}',
        "letter_failed",
    ),
    (
        "job_fedcba9876543210fedcba9876543210",
        "billing",
        '["file","email"]',
        "async",
        "queued",
        '{"email":{"to":["a@example.com"]},"count":3,"unicode":"\\u00e9"}',
        '{"tenant":"acme"}',
        "",
        "",
        1764000000.25,
        1764000100.5,
        "",
        None,
        None,
        "",
    ),
]
SQLITE_EVENT = (
    7,
    "job_0123456789abcdef0123456789abcdef",
    "billing",
    "file",
    "letter_failed",
    "failed",
    '{"reason":"x","n":[1,2.5,null]}',
    '{"tenant":"acme"}',
    1764000099.125,
    "disp-9",
    1,
    1764000100.5,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

SQLITE_PAGE_TOKEN = "WzE3NjQwMDAwMDAuMjUsImpvYl8wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZiJd"
NATS_PAGE_TOKEN = (
    "5b313736343030303030302e32352c226a6f625f3031323334353637383961626364656630313233343536373839"
    "616263646566225d"
)


def test_a_job_round_trips_through_json_text() -> None:
    for job in (JOB, QUEUED_JOB, JOB.replace(trace_context=TRACEPARENT)):
        assert codec.job_from_json(json.loads(codec.dumps(codec.job_to_json(job)))) == job


def test_an_event_round_trips_through_json_text_with_its_cursor_kept_apart() -> None:
    encoded = codec.dumps(codec.event_to_json(EVENT.replace(cursor="9")))

    assert "cursor" not in json.loads(encoded)
    assert codec.event_from_json(json.loads(encoded), "9") == EVENT.replace(cursor="9")


def test_jobs_and_events_encode_as_the_nats_backend_stored_them() -> None:
    envelope = json.loads(NATS_ENVELOPE)

    assert codec.job_to_json(JOB) == envelope["job"]
    assert codec.event_to_json(EVENT) == envelope["pending"][0]["event"]
    assert codec.dumps(codec.event_to_json(EVENT)).encode() == NATS_EVENT


def test_what_the_nats_backend_stored_decodes() -> None:
    envelope = json.loads(NATS_ENVELOPE)

    assert codec.job_from_json(envelope["job"]) == JOB
    assert codec.event_from_json(envelope["pending"][0]["event"]) == EVENT
    assert codec.event_from_json(json.loads(NATS_EVENT), "7") == EVENT.replace(cursor="7")


async def test_what_the_sqlite_backend_stored_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    store = SqliteStore(path)
    conn = await version_1_file(path)
    with conn:
        conn.execute("INSERT INTO outbox (job_id, due_at) VALUES (?, 0)", (QUEUED_JOB.job_id,))
        conn.executemany(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", SQLITE_JOBS
        )
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", SQLITE_EVENT)
    conn.close()

    await store.open()
    try:
        assert await store.get_job(JOB.job_id) == JOB
        assert await store.get_job(QUEUED_JOB.job_id) == QUEUED_JOB
        assert await store.read_events(client="billing") == [EVENT.replace(cursor="7")]
        assert await store.last_cursor() == "7"
        assert await store.outbox_depths() == {
            QUEUED_JOB.client: {Priority.NORMAL: QueueDepth(fresh=1)}
        }
    finally:
        await store.close()


def test_the_sqlite_writer_writes_the_columns_of_the_codecs_objects() -> None:
    # It builds an event's row, and the columns an append changes of a job, straight from them.
    event = {**codec.event_to_json(EVENT), "terminal": 1, "record_time": 5.0}
    event["data"], event["metadata"] = codec.dumps(EVENT.data), codec.dumps(EVENT.metadata)
    assert dict(zip(rows.EVENT_COLUMNS, rows.event_values(EVENT, 5.0), strict=True)) == event
    for job in (JOB.replace(retried_by="job_fedcba9876543210fedcba9876543210"), QUEUED_JOB):
        data = {"retried_by": "", **codec.job_to_json(job)}
        for column in ("result", "error"):
            data[column] = None if data[column] is None else codec.dumps(data[column])
        state = {column: data[column] for column in rows.JOB_STATE_COLUMNS}
        values = rows.job_state_values(job)
        assert dict(zip(rows.JOB_STATE_COLUMNS, values, strict=True)) == state


def test_page_tokens_are_base64_and_those_of_either_backend_are_read() -> None:
    assert codec.encode_page_token(JOB) == SQLITE_PAGE_TOKEN
    assert codec.decode_page_token(SQLITE_PAGE_TOKEN) == (JOB.created_at, JOB.job_id)
    assert codec.decode_page_token(NATS_PAGE_TOKEN) == (JOB.created_at, JOB.job_id)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        "zz",
        codec.dumps([1.0, "job"]),  # the JSON itself, not encoded
        bytes.fromhex("7b7d").hex(),  # hex of {}
        codec.dumps({"a": 1, "b": 2}).encode().hex(),  # two keys: unpacks, but not a position
        codec.dumps(["1.0", "job"]).encode().hex(),
        codec.dumps([10**400, "job"]).encode().hex(),  # no float holds it
        "[" * 300 + "]" * 300,
        "\udc80",
    ],
)
def test_a_page_token_no_backend_issued_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        codec.decode_page_token(token)

    assert [v.field for v in raised.value.violations] == ["page_token"]


@pytest.mark.parametrize(
    ("cursor", "value"),
    [("", 0), ("0", 0), ("42", 42), ("007", 7), (str(MAX_CURSOR), MAX_CURSOR)],
)
def test_a_cursor_is_the_decimal_string_of_a_sequence_number(cursor: str, value: int) -> None:
    assert cursor_value(cursor) == value
    assert codec.parse_cursor(cursor) == value


@pytest.mark.parametrize(
    "cursor", ["²", "١٢", "-1", "+1", "1.0", " 1", "1 ", "0x10", "abc", str(MAX_CURSOR + 1)]
)
def test_what_is_not_a_cursor_is_refused_by_the_one_rule(cursor: str) -> None:
    assert cursor_value(cursor) is None
    with pytest.raises(InvalidArgument) as raised:
        codec.parse_cursor(cursor)

    assert [v.field for v in raised.value.violations] == ["cursor"]


async def _records(store: Store) -> tuple[list[Job | None], list[JobEvent]]:
    """The same calls on `store`, and what it then holds, the record times (the store's) left
    out."""
    await store.open()
    try:
        first = JOB.replace(state=JobState.QUEUED, result=None, error=None, last_event="")
        second = QUEUED_JOB
        for job in (first, second):
            await store.create_job(job, queued(job), enqueue=True)
        for job, kind, key in [
            (first, "letter_created", "wh-1"),
            (first, states.FAILED, "wh-2"),
            (second, "letter_created", None),
            (first, states.FAILED, "wh-2"),
        ]:
            event = EVENT.replace(job_id=job.job_id, type=kind, state=states.state_for(kind))
            await store.append_event(event, dedupe_key=key, apply=states.apply_event)
        jobs = [await store.get_job(job.job_id) for job in (first, second)]
        events = await store.read_events(client="billing")
    finally:
        await store.close()
    at = {e.record_time for e in events}
    return [
        None if job is None else job.replace(updated_at=0.0 if job.updated_at in at else -1.0)
        for job in jobs
    ], [e.replace(record_time=0.0) for e in events]


def queued(job: Job) -> JobEvent:
    return EVENT.replace(
        job_id=job.job_id,
        type=states.QUEUED,
        state=JobState.QUEUED,
        data={},
        dispatch_id="",
        terminal=False,
        record_time=0.0,
    )


async def test_the_memory_and_sqlite_backends_record_alike(tmp_path: Path) -> None:
    in_memory = await _records(MemoryStore())
    in_sqlite = await _records(SqliteStore(tmp_path / "gateway.db"))

    assert in_memory == in_sqlite
    jobs, events = in_memory
    assert [e.cursor for e in events] == ["1", "2", "3", "4", "5"]
    assert [job.state for job in jobs if job is not None] == [JobState.FAILED, JobState.IN_PROGRESS]


async def test_a_traced_job_keeps_its_trace_context_in_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        job = QUEUED_JOB.replace(trace_context=TRACEPARENT)
        first = EVENT.replace(job_id=job.job_id, type=states.QUEUED, state=JobState.QUEUED)
        await store.create_job(job, first.replace(terminal=False), enqueue=False)

        assert await store.get_job(job.job_id) == job
    finally:
        await store.close()
