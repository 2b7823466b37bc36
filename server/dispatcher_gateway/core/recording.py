"""Recording the upstream's webhooks: each verified callback becomes one event of the job its
callback token names, once per webhook id, whatever the order it comes in (even before the
upstream's acceptance that names its dispatch).

The webhook receiver (webhooks/) verifies the signature and hands the envelope here; what is
refused here is refused before the upstream is told the webhook was received, because once it
has been, the upstream does not send it again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from . import logfields, states
from .callbacks import DEFAULT_PROVIDERS
from .errors import FieldViolation, InvalidArgument, NotFound
from .eventdata import data_problem
from .model import JSON, Job, JobEvent, JobState, Service
from .ports import JobTraces, NoObserver, NoTraces, Observer, Store
from .records import EARLIEST_EVENT_TIME, END_OF_EVENT_TIMES, dispatch_id_of
from .tokens import CallbackTokens


def _event_time(envelope: JSON, default: float) -> float:
    """When the webhook says its event happened; `default` (its arrival) when it says nothing a
    client could be sent. A time without a zone is UTC, whatever the replica's own zone."""
    stamp = envelope.get("timestamp")
    if not isinstance(stamp, str):
        return default
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return default
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    when = parsed.timestamp()
    return when if EARLIEST_EVENT_TIME <= when < END_OF_EVENT_TIMES else default


class _OtherDispatch(NotFound):
    """A webhook naming a dispatch that is not its job's: one job's webhook posted to another
    job's callback URL. Answered like an unknown callback, nothing stored."""


def _from_job(job: Job, event: JobEvent, announced: JobState | None = None) -> tuple[Job, JobEvent]:
    """`states.apply_event` for an event that knows only its job's id: the job's client,
    service and metadata (and dispatch id, if the event has none) are taken from the job.

    An event naming another dispatch than the job's is refused. A job with none yet takes the
    event's: its webhook may come before the acceptance that names it."""
    if job.dispatch_id and event.dispatch_id and event.dispatch_id != job.dispatch_id:
        raise _OtherDispatch(
            f"webhook for dispatch {event.dispatch_id!r} sent to the callback of job "
            f"{job.job_id}, dispatch {job.dispatch_id!r}"
        )
    # The dispatch id apply_event records is the job's, else the event's: as it would be with
    # the job's put in the event first. One copy of the event, with the job's fields.
    after, recorded = states.fold_event(job, event, announced=announced)
    return after, event.replace(
        client=job.client, service=job.service, metadata=job.metadata, **recorded
    )


class WebhookRecorder:
    """The core.ports.WebhookSink the webhook receiver hands verified callbacks to."""

    def __init__(
        self,
        store: Store,
        tokens: CallbackTokens,
        *,
        clock: Callable[[], float],
        observer: Observer | None = None,
        traces: JobTraces | None = None,
        own_ends: frozenset[str] = DEFAULT_PROVIDERS,
    ) -> None:
        """`own_ends`: the providers that send their own end events (CallbackRules.providers)."""
        self.store = store
        self.tokens = tokens
        self.own_ends = own_ends
        self.clock = clock
        self.observer = observer or NoObserver()
        self.traces = traces or NoTraces()

    async def record_webhook(self, token: str, envelope: JSON, *, webhook_id: str) -> bool:
        job_id = self.tokens.job_id(token)
        if job_id is None:
            raise NotFound("no such callback")
        dispatch_id = dispatch_id_of(envelope)
        logfields.known(job_id=job_id, dispatch_id=dispatch_id)
        event_type = envelope.get("event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidArgument([FieldViolation("event", "a non-empty string is required")])
        if event_type in states.OWN_EVENTS:
            raise InvalidArgument(
                [FieldViolation("event", f"{event_type!r} is an event the gateway records itself")]
            )
        data = envelope.get("data")
        payload: JSON = data if isinstance(data, dict) else {"data": data}
        # Refused before it is acknowledged: once accepted, an event no client can decode could
        # never be delivered, and Dispatcher would not send it again.
        problem = data_problem(payload)
        if problem is not None:
            raise InvalidArgument([FieldViolation("data", f"{problem}: no client could decode it")])
        announced = None
        provider = envelope.get("provider")
        if (
            event_type == states.COMPLETED
            and isinstance(provider, str)
            and provider.lower() in self.own_ends
        ):
            # The async-flow recipe's end of a dispatch, from a provider that sends its own
            # ends: the request reached the provider (what a sync answer says for such a job),
            # not the signature or the delivery, which its own end event says. Progress.
            announced = JobState.IN_PROGRESS
        # One store call: the job's own fields (client, service, metadata) are placeholders here,
        # filled in by `_from_job` from the job the store reads inside the append.
        event = JobEvent(
            job_id=job_id,
            client="",
            service=Service.EMAIL,
            type=event_type,
            state=announced or states.state_for(event_type),
            data=payload,
            metadata={},
            event_time=_event_time(envelope, self.clock()),
            dispatch_id=dispatch_id,
        )
        traced = ""

        def apply(job: Job, event: JobEvent) -> tuple[Job, JobEvent]:
            nonlocal traced
            traced = job.trace_context
            return _from_job(job, event, announced)

        try:
            stored = await self.store.append_event(
                event, dedupe_key=f"wh:{webhook_id}", apply=apply
            )
        except _OtherDispatch:
            raise
        except NotFound:
            raise NotFound("no such callback") from None
        self.traces.concerns(traced)
        self.observer.webhook("recorded" if stored is not None else "duplicate")
        if stored is not None and stored.terminal:
            self.observer.job_ended(stored.service.value, stored.state.value)
        return stored is not None
