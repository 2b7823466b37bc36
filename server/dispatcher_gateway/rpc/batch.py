"""DispatchBatch: many dispatch requests in one call, each answered as Dispatch would answer it
alone (its job, or its own error), in order.

Each item is taken as Dispatch takes one: it uses one of the client's Dispatch calls (the
per-client rate), is validated, authorized for its services, and counted against the client's
queued jobs, those of the batch accepted before it included. What passes is stored in one call
(core's submit_batch: one commit on SQLite). Only the batch itself (too many items) fails the
call; an item's error is its result.
"""

from __future__ import annotations

from collections.abc import Sequence

from dispatcher.gateway.v1 import gateway_pb2 as pb

from ..core.errors import FieldViolation, GatewayError, InvalidArgument
from ..core.gateway import Gateway
from ..core.model import DispatchSpec, Job, JobState
from .auth import authorize
from .clients import Client
from .convert import fill_job, spec_from_request
from .errors import domain_code
from .limits import ClientLimits

BATCH_MAX = 100
"""Requests in one call (GATEWAY_BATCH_MAX), as the notification platforms take (Novu: 100)."""


async def dispatch_batch(
    gateway: Gateway,
    limits: ClientLimits,
    client: Client,
    requests: Sequence[pb.DispatchRequest],
    *,
    batch_max: int,
    trace_context: str,
) -> pb.DispatchBatchResponse:
    if len(requests) > batch_max:
        raise InvalidArgument(
            [FieldViolation("requests", f"at most {batch_max} in one batch, got {len(requests)}")]
        )
    response = pb.DispatchBatchResponse()
    results = [response.results.add() for _ in requests]
    specs: list[DispatchSpec] = []
    taken: list[pb.DispatchBatchResult] = []
    for request, result in zip(requests, results, strict=True):
        try:
            limits.take_dispatch(client.name)
            spec = spec_from_request(request)
            # Not the mode: a sync item is refused as such (core), whatever the client may do.
            authorize(client, spec.services)
            limits.check_queue(client.name, accepted=len(specs))
        except GatewayError as exc:
            _fill_error(result.error, exc)
            continue
        specs.append(spec)
        taken.append(result)
    if not specs:
        return response
    outcomes = await gateway.dispatches.submit_batch(
        client.name, specs, trace_context=trace_context
    )
    for result, outcome in zip(taken, outcomes, strict=True):
        if isinstance(outcome, Job):
            fill_job(result.job, outcome)
            if outcome.state is JobState.QUEUED:
                limits.queued(client.name, outcome.job_id)
        else:
            _fill_error(result.error, outcome)
    return response


def _fill_error(message: pb.ItemError, exc: GatewayError) -> None:
    """The error the item would have had alone: its status code, message and field
    violations (named from the item, as Dispatch names them)."""
    message.code = domain_code(exc).value[0]
    message.message = str(exc)
    if isinstance(exc, InvalidArgument):
        message.field_violations.extend(
            pb.FieldViolation(field=v.field, description=v.description) for v in exc.violations
        )
