import pytest

from dispatcher_gateway.core import states
from dispatcher_gateway.core.model import Job, JobEvent, JobState, Mode, Service


def make_job(state: JobState = JobState.QUEUED) -> Job:
    return Job(
        job_id="job_1",
        client="anonymous",
        services=(Service.POSTAL,),
        mode=Mode.ASYNC,
        state=state,
        body={},
        metadata={"order": "42"},
        idempotency_key="",
        request_hash="h",
        created_at=1.0,
        updated_at=1.0,
    )


def make_event(event_type: str, data: dict[str, object] | None = None) -> JobEvent:
    return JobEvent(
        job_id="job_1",
        client="anonymous",
        service=Service.POSTAL,
        type=event_type,
        state=states.state_for(event_type),
        data=data or {},
        metadata={"order": "42"},
        event_time=2.0,
        dispatch_id="disp_1",
        record_time=3.0,
    )


def test_progress_event_moves_job_forward() -> None:
    job, event = states.apply_event(make_job(), make_event("letter_in_transit"))
    assert job.state is JobState.IN_PROGRESS
    assert event.state is JobState.IN_PROGRESS
    assert not event.terminal
    assert job.dispatch_id == "disp_1"


def test_terminal_event_is_marked_and_keeps_result() -> None:
    job, event = states.apply_event(make_job(), make_event("letter_delivered", {"ok": True}))
    assert job.state is JobState.SUCCEEDED
    assert event.terminal
    assert job.result == {"ok": True}


def test_late_progress_never_moves_a_finished_job_back() -> None:
    done, _ = states.apply_event(make_job(), make_event("letter_delivered"))
    after, late = states.apply_event(done, make_event("letter_created"))
    assert after.state is JobState.SUCCEEDED
    assert late.state is JobState.SUCCEEDED
    assert not late.terminal


def test_second_terminal_event_does_not_finish_the_job_again() -> None:
    done, _ = states.apply_event(make_job(), make_event("letter_delivered"))
    after, second = states.apply_event(done, make_event("letter_returned"))
    assert after.state is JobState.SUCCEEDED
    assert not second.terminal


def test_submitted_after_webhook_keeps_progress() -> None:
    moving, _ = states.apply_event(make_job(), make_event("letter_created"))
    after, submitted = states.apply_event(moving, make_event("submitted"))
    assert after.state is JobState.IN_PROGRESS
    assert submitted.state is JobState.IN_PROGRESS


def test_unknown_event_is_progress_not_an_end() -> None:
    job, event = states.apply_event(make_job(), make_event("letter_scanned_somewhere"))
    assert job.state is JobState.IN_PROGRESS
    assert not event.terminal


def test_failure_reads_the_upstream_error_body() -> None:
    body = {"error": "provider_error", "message": "mailbox full", "details": {"field": "to"}}
    job, event = states.apply_event(make_job(), make_event("letter_failed", body))
    assert job.state is JobState.FAILED
    assert event.terminal
    assert job.error is not None
    assert (job.error.code, job.error.message) == ("provider_error", "mailbox full")
    assert job.error.details == {"field": "to"}


def test_failure_reads_the_gateways_own_failure() -> None:
    data = {"code": "upstream_unavailable", "message": "gave up", "http_status": 503, "details": {}}
    job, _ = states.apply_event(make_job(), make_event(states.FAILED, data))
    assert job.error is not None
    assert job.error.http_status == 503


@pytest.mark.parametrize(
    ("written", "status"),
    [
        (404, 404),
        (404.0, 404),
        ("404", 404),
        (":", 0),
        ("4O4", 0),
        ("٤٠٤", 0),
        (10**12, 0),
        (10**400, 0),
        (1e300, 0),
        (float("inf"), 0),
        (True, 0),
        ([404], 0),
        ({"s": 404}, 0),
        (None, 0),
        (42, 0),
    ],
)
def test_a_failures_http_status_is_a_status_or_none(written: object, status: int) -> None:
    # Found by tests/fuzz: a webhook's {"http_status": ":"} made its record fail (ValueError, a
    # 500 that Dispatcher retries for 28 h), and 10**12 a job whose every read failed.
    job, _ = states.apply_event(make_job(), make_event("letter_failed", {"http_status": written}))
    assert job.error is not None
    assert job.error.http_status == status
