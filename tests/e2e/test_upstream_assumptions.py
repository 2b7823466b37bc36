"""What the gateway's guarantees rest on, and what is left of them when the upstream breaks it
(docs/upstream.md, "What the gateway assumes").

The same load runs against the sandbox as the gateway assumes it, then against variants that
break one assumption each: the upstream ignores X-Idempotency-Key (a repeated key is a new
dispatch), or sends webhooks without their id (in Dispatcher's scheme, which does not sign the
id; in the Standard Webhooks scheme, which does, so that no webhook verifies). Faults make the
gateway send again (answers lost after the upstream processed the request, 5xx, 429) and the
upstream deliver each webhook three times, shuffled, with a progress event repeated after the end.

Each run prints the double sends the upstream made and the double events the stream carried.
Whatever the variant, every job has exactly one terminal event on the stream, and the gateway's
record of its requests (GetJob's attempts) is the upstream's request log, request id for request
id. The doubles are what the gateway can know of them: a double send needs a request whose answer
never came (the gateway records it with status 0) followed by another the upstream processed;
a double event is an event the upstream sent twice in two different bodies (the repeated
progress event, which carries a new timestamp)."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core.callbacks import CallbackRules
from dispatcher_gateway.core.model import Service
from dispatcher_gateway.sandbox import Faults, Sandbox
from tests.support.loopback import GatewayFactory, RunningSandbox
from tests.support.requests import EVERY_SERVICE, request_for

PER_SERVICE = 10
N = PER_SERVICE * len(EVERY_SERVICE)
CONCURRENCY = 20
UPSTREAM_TIMEOUT = 1.5
"""The gateway's wait for an answer, async or sync: far above what the sandbox takes to answer
on loopback, far below how long it holds back a lost answer (`timeout_delay`), so a request
without an answer is, but on a stalled machine, one the sandbox processed."""
FAULTS: dict[str, Any] = {
    "timeout_rate": 0.15,  # processed, answered after the gateway stopped waiting
    "timeout_delay": 2 * UPSTREAM_TIMEOUT,
    "error_rate": 0.1,  # 5xx, refused before processing
    "rate_limit_rate": 0.05,
    "retry_after": 0.0,
    "duplicate_deliveries": 3,
    "shuffle": True,
    "late_progress_rate": 1.0,  # postal's letter_in_transit (Signaturit sends no progress)
}
PROCESSED_OR_UNKNOWN = frozenset({0, 200, 202})
"""The statuses of a request the upstream may have processed: no answer, or its acceptance."""
OVERDUE_AFTER = 3.0
"""The callback deadline of the variant where no webhook verifies."""
RUN_TIMEOUT = 90.0
POLL = 0.2
SETTLE_TIMEOUT = 60.0
"""Until every webhook is answered 2xx or given up (the scaled retry schedule takes ~10 s)."""


@dataclass(frozen=True)
class Variant:
    name: str
    faults: dict[str, Any]
    scheme: str = "dispatcher"
    deadline: float | None = None

    @property
    def keys_honoured(self) -> bool:
        return not self.faults.get("ignore_idempotency_key", False)

    @property
    def webhooks_verify(self) -> bool:
        return not (self.scheme == "standard" and self.faults.get("omit_webhook_id"))


VARIANTS = [
    Variant("as assumed", {}),
    Variant("ignores X-Idempotency-Key", {"ignore_idempotency_key": True}),
    Variant("omits webhook ids", {"omit_webhook_id": True}),
    Variant(
        "omits webhook ids, Standard Webhooks",
        {"omit_webhook_id": True},
        scheme="standard",
        deadline=OVERDUE_AFTER,
    ),
]


@dataclass
class Stream:
    """Every event of the client, from the first."""

    events: list[pb.JobEvent] = field(default_factory=list)
    seen: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def follow(self, stub: pb_grpc.DispatchServiceStub) -> None:
        async for event in stub.Subscribe(pb.SubscribeRequest()):
            async with self.seen:
                self.events.append(event)
                self.seen.notify_all()

    async def until(self, done: Callable[[list[pb.JobEvent]], bool]) -> None:
        async with self.seen:
            await self.seen.wait_for(lambda: done(self.events))


async def every_request_recorded(
    stub: pb_grpc.DispatchServiceStub, upstream: Sandbox, job_ids: set[str]
) -> dict[str, pb.Job]:
    """The jobs, once each request the upstream received for one is among its attempts."""
    while True:
        jobs = {
            job_id: await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
            for job_id in job_ids
        }
        recorded = {a.request_id for job in jobs.values() for a in job.attempts}
        if all(r.request_id in recorded for r in upstream.requests if r.idempotency_key in jobs):
            return jobs
        await asyncio.sleep(POLL)


def _content(event: pb.JobEvent) -> str:
    data = json_format.MessageToDict(event.data)
    return json.dumps([event.job_id, event.type, data], sort_keys=True)


@pytest.mark.timeout(RUN_TIMEOUT + SETTLE_TIMEOUT + 60)
@pytest.mark.parametrize(
    ("sandbox_options", "variant"),
    [({"time_factor": 0.0001, "seed": 11, "signature_scheme": v.scheme}, v) for v in VARIANTS],
    ids=[v.name for v in VARIANTS],
)
async def test_what_the_gateway_still_guarantees_when_the_upstream_breaks_an_assumption(
    gateways: GatewayFactory, sandbox: RunningSandbox, variant: Variant
) -> None:
    upstream = sandbox.sandbox
    changes: dict[str, object] = {
        "submit_timeout": UPSTREAM_TIMEOUT,
        "sync_timeout": UPSTREAM_TIMEOUT,
        "breaker_open_for": 0.5,
    }
    if variant.deadline is not None:
        deadlines = {Service.ESIGN: variant.deadline, Service.POSTAL: variant.deadline}
        changes["callbacks"] = CallbackRules(deadlines=deadlines)
    await gateways.start(**changes)
    upstream.faults.update({**FAULTS, **variant.faults})
    stream = Stream()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        following = asyncio.create_task(stream.follow(stub))
        try:
            slots = asyncio.Semaphore(CONCURRENCY)

            async def dispatch(index: int) -> str:
                service, *chain = EVERY_SERVICE[index % len(EVERY_SERVICE)]
                request = request_for(service, chain=tuple(chain))
                request.idempotency_key = f"assumptions-{index}"
                async with slots:
                    return (await stub.Dispatch(request, timeout=10)).job.job_id

            job_ids = set(await asyncio.gather(*(dispatch(i) for i in range(N))))
            assert len(job_ids) == N

            def all_ended(events: list[pb.JobEvent]) -> bool:
                return job_ids <= {e.job_id for e in events if e.terminal}

            await asyncio.wait_for(stream.until(all_ended), RUN_TIMEOUT)
            # Every webhook answered or given up, then one more job, sent without faults: once
            # its end is on the stream, so is every event recorded before it.
            await upstream.wait_for_webhooks(SETTLE_TIMEOUT)
            upstream.faults = Faults()
            marker = request_for(pb.SERVICE_SMS)
            marker.mode = pb.MODE_SYNC
            marker_id = (await stub.Dispatch(marker, timeout=10)).job.job_id

            def marker_ended(events: list[pb.JobEvent]) -> bool:
                return any(e.job_id == marker_id and e.terminal for e in events)

            await asyncio.wait_for(stream.until(marker_ended), RUN_TIMEOUT)
            # A job may have ended (by its webhooks) while a request of its is still waiting
            # for an answer: its record comes when the gateway stops waiting.
            jobs = await asyncio.wait_for(
                every_request_recorded(stub, upstream, job_ids), RUN_TIMEOUT
            )
        finally:
            following.cancel()
    events = [e for e in stream.events if e.job_id in job_ids]

    # What the upstream did.
    dispatches = collections.Counter(d.idempotency_key for d in upstream.dispatches)
    double_sends = sum(dispatches[j] - 1 for j in job_ids)
    sent = collections.defaultdict(list)
    for request in upstream.requests:
        sent[request.idempotency_key].append(request)
    bound = {job.dispatch_id for job in jobs.values()}
    late_repeats = sum(
        1
        for d in upstream.dispatches
        if d.dispatch_id in bound
        for w in d.webhooks
        if w.repeats is not None and w.delivered
    )
    # What the gateway knows: its requests, each with the status it got (0: no answer).
    in_doubt = sum(1 for job in jobs.values() for a in job.attempts if a.http_status == 0)
    could_be_doubles = sum(
        max(0, sum(1 for a in job.attempts if a.http_status in PROCESSED_OR_UNKNOWN) - 1)
        for job in jobs.values()
    )
    # What the stream carried.
    terminal = collections.Counter(e.job_id for e in events if e.terminal)
    contents = collections.Counter(_content(e) for e in events)
    double_events = sum(n - 1 for n in contents.values())
    ends = collections.Counter(job.error.code or job.last_event for job in jobs.values())
    print(
        f"\nupstream {variant.name}: {N} jobs, {len(upstream.requests)} requests upstream, "
        f"{sum(dispatches[j] for j in job_ids)} dispatches, double sends {double_sends} "
        f"(requests without an answer {in_doubt}, of which followed by another processed "
        f"{could_be_doubles}); stream: {len(events)} events, "
        f"double events {double_events} (progress events repeated by the upstream "
        f"{late_repeats}); jobs ended by {dict(ends)}"
    )

    # Whatever the upstream does: every job ends, exactly once on the stream.
    assert terminal == dict.fromkeys(job_ids, 1)
    assert {job.state for job in jobs.values()} <= {
        pb.JOB_STATE_SUCCEEDED,
        pb.JOB_STATE_FAILED,
    }
    # The gateway's record of its requests is the upstream's log, request id for request id.
    for job_id, job in jobs.items():
        assert sorted(a.request_id for a in job.attempts) == sorted(
            r.request_id for r in sent[job_id]
        )
    # The doubles left are the ones the gateway can know of, and only them.
    if variant.keys_honoured:
        assert double_sends == 0
    else:
        # Each request left without an answer was processed, but for one the sandbox had not
        # reached when the gateway stopped waiting (a stalled machine): at most, then.
        assert 0 < double_sends <= could_be_doubles
    assert double_events == late_repeats
    # The faults did their work: the case under test was not missed.
    assert in_doubt > 0
    assert could_be_doubles > 0
    if variant.webhooks_verify:
        assert late_repeats == PER_SERVICE  # one per postal job
        assert "callback_overdue" not in ends
    else:
        assert late_repeats == 0
        callback_jobs = PER_SERVICE * 3  # postal, esign, file then esign
        assert ends["callback_overdue"] == callback_jobs
