"""Issue 3's rules end to end, one behaviour per test, on a real in-process gateway and the
sandbox: Retry-After in both forms, the circuit breaker opening and closing, the sync deadline,
a caller that goes away, the sync rate limit, a slow subscriber, the maximum stream age, and
out-of-order webhooks. The outbox's rule logic has its own tests in tests/unit/test_outbox.py."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.config import Settings
from dispatcher_gateway.core import outbox
from dispatcher_gateway.core.model import JobEvent
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.rpc import servicer
from dispatcher_gateway.rpc.servicer import stream_age
from tests.support.clients import job_events_until
from tests.support.loopback import GatewayFactory, RunningSandbox, TlsFiles
from tests.support.process import gateway_env
from tests.support.requests import email_request, request_for, status_details

CALL_TIMEOUT = 10.0
WAIT_TIMEOUT = 15.0
POLL = 0.01
UNANSWERED = 10 * WAIT_TIMEOUT
"""A sync delay of the sandbox that no test waits out: its answer never comes while one runs
(the sandbox answers a held request at once when it closes)."""
RESUME_HINT = re.compile(r"after_cursor='(\d+)'")


async def eventually(check: Callable[[], object]) -> None:
    async with asyncio.timeout(WAIT_TIMEOUT):
        while not check():
            await asyncio.sleep(POLL)


async def events_until_terminal(
    stub: pb_grpc.DispatchServiceStub, job_id: str
) -> list[pb.JobEvent]:
    async def collect() -> list[pb.JobEvent]:
        return [e async for e in stub.WatchJob(pb.WatchJobRequest(job_id=job_id))]

    return await asyncio.wait_for(collect(), WAIT_TIMEOUT)


async def the_only_job(stub: pb_grpc.DispatchServiceStub) -> pb.Job:
    (job,) = (await stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT)).jobs
    return job


# Retry-After


async def first_try_refused_then_accepted(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> float:
    """Dispatch async while the sandbox refuses the first try with a 429. Returns the seconds
    between that try's arrival and the next one's, both as the sandbox saw them."""
    response = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
    events = await events_until_terminal(stub, response.job.job_id)
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED
    refused, accepted = sandbox.sandbox.requests
    assert (refused.status, accepted.status) == (429, 200)
    return accepted.received_at - refused.received_at


async def test_retry_after_in_seconds_is_honoured(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    # The gateway's own backoff would try again within 0.05 s.
    sandbox.sandbox.faults.update({"refuse_next": [429], "retry_after": 1.0})
    assert await first_try_refused_then_accepted(stub, sandbox) >= 0.95


async def test_retry_after_as_an_http_date_is_honoured(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    # An HTTP date has whole seconds: "now + 2 s" means at least 1 s from now.
    sandbox.sandbox.faults.update(
        {"refuse_next": [429], "retry_after": 2.0, "retry_after_http_date": True}
    )
    assert await first_try_refused_then_accepted(stub, sandbox) >= 0.95


# Giving up


async def test_a_job_past_gateway_give_up_after_fails_with_the_last_upstream_error(
    gateways: GatewayFactory, sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    env = gateway_env(sandbox, tls, tmp_path)
    env |= {"GATEWAY_GIVE_UP_AFTER": "0.5", "GATEWAY_RETRY_BASE": "0.05"}
    retry = Settings.from_env(env).retry
    # A breaker opened for its default 10 s would hold the last try back; it has its own test.
    await gateways.start(retry=retry, breaker_threshold=1000)
    sandbox.sandbox.faults.update({"error_rate": 1.0})
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        response = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
        events = await events_until_terminal(stub, response.job.job_id)
        job = await stub.GetJob(pb.GetJobRequest(job_id=response.job.job_id), timeout=CALL_TIMEOUT)
    assert [e.type for e in events] == ["queued", "failed"]
    assert events[-1].state == pb.JOB_STATE_FAILED
    assert job.error.http_status in {500, 502, 503}
    assert job.error.message.startswith("gave up after")
    assert sandbox.sandbox.stats().dispatch_requests > 1
    assert sandbox.sandbox.stats().dispatches == 0


# The circuit breaker


async def test_the_breaker_opens_and_closes_and_readiness_stays_up(
    gateways: GatewayFactory, sandbox: RunningSandbox
) -> None:
    app = await gateways.start(breaker_threshold=3, breaker_open_for=1.0)
    assert app.listeners is not None
    admin = app.listeners.admin.url
    sandbox.sandbox.faults.update({"error_rate": 1.0})
    async with (
        grpc.aio.insecure_channel(gateways.target) as channel,
        httpx.AsyncClient(base_url=admin) as http,
    ):
        stub = pb_grpc.DispatchServiceStub(channel)
        queued = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)

        async def circuit() -> dict[str, object]:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["ready"] is True
            state: dict[str, object] = ready.json()["upstream_circuit"]
            return state

        async with asyncio.timeout(WAIT_TIMEOUT):
            while (await circuit())["state"] != "open":
                await asyncio.sleep(POLL)
        # Open: a sync call fails fast, without calling the upstream; async still queues.
        requests = sandbox.sandbox.stats().dispatch_requests
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        reasons = [d.reason for d in status_details(info.value) if hasattr(d, "reason")]
        assert reasons == ["upstream_circuit_open"]
        also = await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT)
        assert also.job.state == pb.JOB_STATE_QUEUED
        assert sandbox.sandbox.stats().dispatch_requests == requests

        sandbox.sandbox.faults.update({"error_rate": 0.0})
        for job in (queued.job, also.job):
            events = await events_until_terminal(stub, job.job_id)
            assert events[-1].state == pb.JOB_STATE_SUCCEEDED
        state = await circuit()
        assert state["state"] == "closed"
        assert state["times_opened"] >= 1


# Sync dispatch: deadline, cancellation, rate limit


@pytest.mark.parametrize("sandbox_options", [{"sync_delay": UNANSWERED}])
async def test_a_sync_deadline_cancels_the_upstream_call_and_the_job_says_so(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def failed() -> pb.Job:
        while (job := await the_only_job(stub)).state != pb.JOB_STATE_FAILED:
            await asyncio.sleep(POLL)
        return job

    job = await asyncio.wait_for(failed(), WAIT_TIMEOUT)
    # Recorded at the deadline, not when the upstream answers: it has not.
    assert sandbox.sandbox.stats().by_status == {}
    # Whichever noticed first, gRPC's deadline or the upstream call's own timeout (the rest of
    # the caller's budget), the job says the deadline passed with no answer.
    assert job.error.code in {"deadline_exceeded", "upstream_timeout"}, job.error
    assert sandbox.sandbox.stats().dispatch_requests == 1


@pytest.mark.parametrize("sandbox_options", [{"sync_delay": UNANSWERED}])
async def test_a_caller_that_goes_away_cancels_the_upstream_call_and_the_job_says_so(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    call = stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
    await eventually(lambda: sandbox.sandbox.stats().dispatch_requests)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def failed() -> pb.Job:
        while (job := await the_only_job(stub)).state != pb.JOB_STATE_FAILED:
            await asyncio.sleep(POLL)
        return job

    job = await asyncio.wait_for(failed(), WAIT_TIMEOUT)
    # Recorded when the caller went away, not when the upstream answers: it has not.
    assert sandbox.sandbox.stats().by_status == {}
    assert job.error.code == "cancelled"
    assert "may have" in job.error.message


# The upstream acts on the request at once and answers late: the 202 never reaches the call.
@pytest.mark.parametrize("sandbox_options", [{"event_delay": 1.0}])
async def test_a_sync_call_whose_acceptance_is_lost_leaves_a_called_back_job_to_its_webhook(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox
) -> None:
    """A job that ends by webhook (esign) sent in MODE_SYNC: the upstream accepted it, but its
    answer did not come within the call's deadline. The job is not failed at the deadline: its
    webhook ends it, once (the signature was made, whatever the call was told)."""
    sandbox.sandbox.faults.update({"timeout_rate": 1.0, "timeout_delay": UNANSWERED})
    request = request_for(pb.SERVICE_ESIGN)
    request.mode = pb.MODE_SYNC
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Dispatch(request, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    job_id = (await the_only_job(stub)).job_id
    events = await job_events_until(stub, job_id, "document_signed", WAIT_TIMEOUT)

    assert [(e.type, e.state) for e in events if e.terminal] == [
        ("document_signed", pb.JOB_STATE_SUCCEEDED)
    ]
    job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert [d.mode for d in sandbox.sandbox.dispatches] == ["async"]


# The upstream answers after the drain has cut the call, before the outbox sends it again.
@pytest.mark.parametrize("sandbox_options", [{"sync_delay": 2.0}])
async def test_a_sync_call_cut_by_a_drain_leaves_its_job_to_the_outbox(
    gateways: GatewayFactory, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain cuts a MODE_SYNC call still waiting for the upstream at the end of its grace: the
    job is not failed as if its caller had gone away; the outbox (here of the next gateway on
    the same store) sends it again under the same key once the call's time is up, and it ends
    with the upstream's answer to the first request."""
    monkeypatch.setattr(outbox, "SYNC_CALL_GRACE", 3.0)
    gateway = await gateways.start()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        call = stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
        await eventually(lambda: sandbox.sandbox.stats().dispatch_requests)
        await gateways.stop(gateway)  # a grace of 1 s: the call is cut
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    await gateways.start()
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        job_id = (await the_only_job(stub)).job_id
        events = await events_until_terminal(stub, job_id)

    assert [(e.type, e.state) for e in events if e.terminal] == [
        ("dispatch_completed", pb.JOB_STATE_SUCCEEDED)
    ]
    assert [r.idempotency_key for r in sandbox.sandbox.requests] == [job_id, job_id]
    assert [d.idempotency_key for d in sandbox.sandbox.dispatches] == [job_id]


async def test_a_sync_call_waits_for_its_rate_slot_within_its_deadline(
    gateways: GatewayFactory,
) -> None:
    # One a 0.2 s window, widened by the gate's 1 s margin: the second slot comes 1.2 s after
    # the first, which is taken after `started`, however long the first call takes.
    await gateways.start(upstream_rate=RateLimit(1, 0.2))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        started = time.monotonic()
        await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
        second = await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
        assert second.job.state == pb.JOB_STATE_SUCCEEDED
        assert time.monotonic() - started >= 1.0


async def test_a_sync_call_whose_turn_comes_after_its_deadline_is_told_how_long_to_wait(
    gateways: GatewayFactory, sandbox: RunningSandbox
) -> None:
    await gateways.start(upstream_rate=RateLimit(1, 60.0))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=2.0)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (retry,) = status_details(info.value)
        assert isinstance(retry, error_details_pb2.RetryInfo)
        assert 55 <= retry.retry_delay.seconds <= 61
        assert sandbox.sandbox.stats().dispatch_requests == 1
        jobs = (await stub.ListJobs(pb.ListJobsRequest(), timeout=CALL_TIMEOUT)).jobs
        refused = jobs[0]  # newest first
        assert refused.state == pb.JOB_STATE_FAILED
        assert refused.error.code == "rate_limited"


async def test_async_jobs_beyond_the_rate_are_queued_never_refused(
    gateways: GatewayFactory, sandbox: RunningSandbox
) -> None:
    await gateways.start(upstream_rate=RateLimit(1, 0.2))
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        accepted = [await stub.Dispatch(email_request(), timeout=CALL_TIMEOUT) for _ in range(3)]
        assert {a.job.state for a in accepted} == {pb.JOB_STATE_QUEUED}
        for response in accepted:
            events = await events_until_terminal(stub, response.job.job_id)
            assert events[-1].state == pb.JOB_STATE_SUCCEEDED
    arrivals = [r.received_at for r in sandbox.sandbox.dispatches]
    assert [r.idempotency_key for r in sandbox.sandbox.dispatches] == [
        a.job.job_id for a in accepted
    ]
    # Never two within the upstream's window. The gate spaces its slots 1.2 s apart (the window
    # and a margin against jitter); arrivals keep that spacing less the jitter, which a loaded
    # machine may stretch: the window is what the upstream is promised.
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(arrivals))


# Streams


async def read_all(stream: grpc.aio.UnaryStreamCall, into: list[pb.JobEvent]) -> None:
    """Read the stream to its end, keeping every event (read() style: the test may have read
    some already, and grpc does not let a call mix read() with iteration)."""
    async with asyncio.timeout(WAIT_TIMEOUT):
        while (event := await stream.read()) is not grpc.aio.EOF:
            assert isinstance(event, pb.JobEvent)
            into.append(event)


async def sync_job(stub: pb_grpc.DispatchServiceStub) -> str:
    response = await stub.Dispatch(email_request(mode=pb.MODE_SYNC), timeout=CALL_TIMEOUT)
    return response.job.job_id


async def test_a_slow_subscriber_is_ended_and_resumes_from_the_store(
    gateways: GatewayFactory,
) -> None:
    app = await gateways.start(stream_backlog=4)
    big = "x" * 200_000
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        job_id = await sync_job(stub)
        stream = stub.Subscribe(pb.SubscribeRequest())
        received = [await stream.read(), await stream.read()]  # caught up, now live
        token = app.gateway.caller.tokens.token(job_id)
        # The reader stops reading; events keep coming, enough to fill every buffer on the way.
        for n in range(100):
            envelope = {"event": "progress", "data": {"n": n, "padding": big}}
            await app.gateway.webhooks.record_webhook(token, envelope, webhook_id=f"wh-{n}")
            if app.hub.streams == 0:
                break
        assert app.hub.streams == 0, "the slow stream was never ended"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read_all(stream, received)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        hint = RESUME_HINT.search(info.value.details() or "")
        assert hint is not None
        assert hint.group(1) == received[-1].cursor
        resumed: list[pb.JobEvent] = []
        last = await app.store.last_cursor()
        async with asyncio.timeout(WAIT_TIMEOUT):
            async for event in stub.Subscribe(pb.SubscribeRequest(after_cursor=hint.group(1))):
                resumed.append(event)
                if event.cursor == last:
                    break
    stored = await app.store.read_events(client="anonymous")
    streamed = [e.cursor for e in stored if e.type != "upstream_attempt"]
    assert [e.cursor for e in received + resumed] == streamed


async def test_streams_end_at_their_maximum_age_with_a_jittered_resume_hint(
    gateways: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    max_age = 1.0
    # The age the servicer drew for each stream, as it drew it: the jitter is checked there, not
    # on when the streams were seen to end (a loop held up past every deadline ends them all at
    # once, whatever their deadlines were).
    drawn: list[float] = []

    def recorded(maximum: float) -> float:
        drawn.append(stream_age(maximum))
        return drawn[-1]

    monkeypatch.setattr(servicer, "stream_age", recorded)
    await gateways.start(max_stream_age=max_age)
    async with grpc.aio.insecure_channel(gateways.target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        await sync_job(stub)

        async def one() -> tuple[float, grpc.aio.AioRpcError, list[pb.JobEvent]]:
            started = time.monotonic()
            seen: list[pb.JobEvent] = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await read_all(stub.Subscribe(pb.SubscribeRequest()), seen)
            return time.monotonic() - started, info.value, seen

        ended = await asyncio.gather(*(one() for _ in range(8)))
    for _, error, seen in ended:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "maximum age" in (error.details() or "")
        hint = RESUME_HINT.search(error.details() or "")
        assert hint is not None
        assert hint.group(1) == seen[-1].cursor
    # Each stream its own age, between (1 - jitter) and 1 times the maximum: they do not all
    # reconnect at once.
    assert len(drawn) == 8
    assert all(max_age * 0.9 <= age <= max_age for age in drawn), drawn
    assert max(drawn) - min(drawn) > 0.005, drawn
    # None ended before the age drawn for it (the k-th shortest lived at least the k-th shortest
    # age); a late loop only ends them later.
    ages = sorted(age for age, _, _ in ended)
    assert all(seen >= age for seen, age in zip(ages, sorted(drawn), strict=True)), (ages, drawn)


async def job_events(gateway: GatewayApp, job_id: str) -> list[JobEvent]:
    """The job's events as a stream shows them (without the record of its upstream requests)."""
    events = await gateway.store.read_events(client="anonymous", job_id=job_id)
    return [e for e in events if e.type != "upstream_attempt"]


@pytest.mark.parametrize("sandbox_options", [{"seed": 7}])
async def test_late_events_never_move_a_finished_job_back(
    stub: pb_grpc.DispatchServiceStub, sandbox: RunningSandbox, gateway: GatewayApp
) -> None:
    sandbox.sandbox.faults.update({"shuffle": True})
    jobs = [
        (await stub.Dispatch(request_for(pb.SERVICE_POSTAL), timeout=CALL_TIMEOUT)).job.job_id
        for _ in range(6)
    ]
    await sandbox.sandbox.wait_for_webhooks(WAIT_TIMEOUT)
    late = 0
    for job_id in jobs:
        async with asyncio.timeout(WAIT_TIMEOUT):
            # Every webhook is stored (answered 200); the 202's `submitted` may come last.
            while len(events := await job_events(gateway, job_id)) < 5:
                await asyncio.sleep(POLL)
        job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
        assert job.state == pb.JOB_STATE_SUCCEEDED
        types = [e.type for e in events]
        assert sorted(types) == sorted(
            ["queued", "submitted", "letter_created", "letter_in_transit", "letter_delivered"]
        )
        (end,) = [i for i, e in enumerate(events) if e.terminal]
        assert events[end].type == "letter_delivered"
        after = events[end + 1 :]
        assert all(e.state.value == "succeeded" for e in after)
        late += sum(e.type.startswith("letter_") for e in after)
    assert late > 0, "no webhook came after its job's end: the case under test never happened"
