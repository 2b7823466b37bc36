"""How events move a job: the upstream's event names mapped to job states, in one place."""

from __future__ import annotations

from typing import Any

from .model import JSON, Job, JobEvent, JobState, UpstreamFailure

# The gateway's own event types.
QUEUED = "queued"
SUBMITTED = "submitted"
FAILED = "failed"
ATTEMPT = "upstream_attempt"
"""One request sent upstream for the job and what came of it: a record, never a change of state."""
# The event that records the upstream's answer to a sync request: the job's end.
COMPLETED = "dispatch_completed"

UNDELIVERABLE = "undeliverable_event"
"""What a stream sends in place of a stored event whose data no client could decode (one stored
before core/eventdata.py refused such data): same cursor, job, state and terminal flag."""

CANCELED = "canceled"
"""The terminal event of a job withdrawn by CancelJob before its submission began; its data
names who canceled it."""
RETRIED = "retried"
"""Recorded on a failed job when RetryJob made the job that sends it again (named in its data,
`retried_by`): the failed job stays as it ended, with `Job.retried_by` set."""

OVERDUE = "callback_overdue"
"""The error code of a job whose terminal webhook did not come within its service's deadline."""

INFORMATIONAL = frozenset({ATTEMPT})
"""Events recorded and streamed that leave the job as it is."""

OWN_EVENTS = frozenset({QUEUED, SUBMITTED, FAILED, ATTEMPT, UNDELIVERABLE, CANCELED, RETRIED})
"""Event types the gateway records itself, which no webhook may carry: an `upstream_attempt`
would stand among the requests GetJob reports, a `failed` among the gateway's own failures.
(`dispatch_completed` is the upstream's word too, in its async-flow recipe.)"""

EVENT_STATES: dict[str, JobState] = {
    QUEUED: JobState.QUEUED,
    SUBMITTED: JobState.SUBMITTED,
    FAILED: JobState.FAILED,
    CANCELED: JobState.CANCELED,
    COMPLETED: JobState.SUCCEEDED,
    # Not sent by Dispatcher as documented (webhooks come for esign and postal only), but named
    # by its async-flow recipe: honoured should they ever come (a `dispatch_completed` webhook
    # from a provider that sends its own ends is progress: core/recording.py).
    "dispatch_failed": JobState.FAILED,
    # esign: signaturit
    "document_signed": JobState.SUCCEEDED,
    "document_declined": JobState.FAILED,
    "document_expired": JobState.FAILED,
    "document_canceled": JobState.FAILED,
    # esign: universign
    "signer_signed": JobState.IN_PROGRESS,
    "transaction_completed": JobState.SUCCEEDED,
    "transaction_failed": JobState.FAILED,
    "transaction_canceled": JobState.FAILED,
    # postal: mysendingbox
    "letter_created": JobState.IN_PROGRESS,
    "letter_in_transit": JobState.IN_PROGRESS,
    "letter_delivered": JobState.SUCCEEDED,
    "letter_failed": JobState.FAILED,
    "letter_returned": JobState.FAILED,
}


def state_for(event_type: str) -> JobState:
    """The state an event announces. An event we do not know yet is progress, never an end:
    it is recorded and shown, and cannot finish a job by mistake."""
    return EVENT_STATES.get(event_type, JobState.IN_PROGRESS)


def apply_event(job: Job, event: JobEvent) -> tuple[Job, JobEvent]:
    """Fold one event into its job. Returns the job after it, and the event as recorded: with the
    job's resulting state, and `terminal` set only on the event that finished the job.

    Dispatcher does not guarantee order, so a job never moves back: a late progress event after
    the end is recorded but leaves the job finished, and the first terminal event wins.
    """
    after, recorded = fold_event(job, event)
    return after, event.replace(**recorded)


def fold_event(
    job: Job, event: JobEvent, *, announced: JobState | None = None
) -> tuple[Job, dict[str, Any]]:
    """`apply_event`, with what changes of the event as recorded (its state, dispatch id and
    terminal flag) as changes to make, for a caller that makes others at once (one copy).
    `announced`: the state the event announces, when not the one its type does."""
    announced = announced or state_for(event.type)
    dispatch_id = job.dispatch_id or event.dispatch_id
    if event.type == RETRIED and not job.retried_by:
        # The failed job stays as it ended (the branch below): only the link is added.
        job = job.replace(retried_by=str(event.data.get("retried_by") or ""))
    if event.type in INFORMATIONAL:
        return job, {"state": job.state, "dispatch_id": dispatch_id, "terminal": False}
    if job.state.terminal or announced.rank < job.state.rank:
        after = job.replace(dispatch_id=dispatch_id, updated_at=event.record_time or job.updated_at)
        return after, {"state": job.state, "dispatch_id": dispatch_id, "terminal": False}
    changes: dict[str, object] = {
        "state": announced,
        "dispatch_id": dispatch_id,
        "last_event": event.type,
        "updated_at": event.record_time or event.event_time,
    }
    if announced is JobState.SUCCEEDED:
        changes["result"] = event.data
    elif announced is JobState.FAILED:
        changes["error"] = failure_from(event.data)
    after = job.replace(**changes)
    return after, {"state": announced, "dispatch_id": dispatch_id, "terminal": announced.terminal}


def failure_from(data: JSON) -> UpstreamFailure:
    """The failure an event's data describes: the gateway's own (`UpstreamFailure.to_json`), the
    upstream's error body (`error`, `message`, `details`), or a provider's status."""
    inner = data.get("error")
    if isinstance(inner, dict):
        return failure_from(inner)
    details = data.get("details")
    return UpstreamFailure(
        code=str(data.get("code") or inner or data.get("status") or "failed"),
        message=str(data.get("message") or data.get("reason") or ""),
        http_status=_http_status(data.get("http_status")),
        details=details if isinstance(details, dict) else {},
    )


def _http_status(value: object) -> int:
    """An HTTP status (100-599) as a webhook's data may write it (404, 404.0, "404"); 0 for
    anything else, which names none."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) == 3:
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return 0
