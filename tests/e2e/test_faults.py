"""Nothing lost, nothing sent twice: N async dispatches of the seven services (and chains) through
a faulty upstream that calls back as documented (esign and postal only), slow sync answers,
duplicated, shuffled and lost webhooks, and a gateway killed with SIGKILL twice mid-run,
restarted on the same store. Every job ends once: by webhook, by the background sync answer, by
its error, or `callback_overdue` when its webhooks never come."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.process import gateway_env, gateway_process
from tests.support.requests import EVERY_SERVICE, request_for

log = logging.getLogger(__name__)

N = 300
RATE_LIMIT, RATE_WINDOW = 100, 3.0
CONCURRENCY = 20
KILLS_AT = (N // 3, 2 * N // 3)
RUN_TIMEOUT = 240.0
FAULTS = {
    "error_rate": 0.2,  # 5xx
    "timeout_rate": 0.1,  # accepted, but the answer comes after the gateway gave up waiting
    "timeout_delay": 2.0,
    "rate_limit_rate": 0.1,  # 429 with Retry-After
    "retry_after": 1.0,
    "duplicate_deliveries": 3,
    "shuffle": True,
    "fail_rate": 0.05,  # the provider refuses: a failure event, or a 417 when sync
    "webhook_loss_rate": 0.05,  # Dispatcher never calls back
    "late_progress_rate": 0.1,  # a progress event again after the end
}
SYNC_DELAY_MAX = 2.0
"""Sync answers take up to this long (the upstream's 2-30 s, scaled down)."""
SYNC_TIMEOUT = 3.0
"""Over the slowest sync answer, under one held back by `timeout_rate`."""
CALLBACK_DEADLINE = 30.0
"""Longer than the sandbox's scaled retries take through a kill (5 s, 5 min, 30 min ... scaled
by 0.005: 0.03, 1.5, 9 s), so only the lost webhooks make a job overdue."""
RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class Subscriber:
    """Follows the event stream across gateway deaths, resuming from its last cursor."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.after = ""
        self.terminal: collections.Counter[str] = collections.Counter()
        self.cursors: list[int] = []
        self.resumes = 0

    async def run(self) -> None:
        while True:
            try:
                async with grpc.aio.insecure_channel(self.target) as channel:
                    stub = pb_grpc.DispatchServiceStub(channel)
                    async for event in stub.Subscribe(pb.SubscribeRequest(after_cursor=self.after)):
                        self.after = event.cursor
                        self.cursors.append(int(event.cursor))
                        if event.terminal:
                            self.terminal[event.job_id] += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RESUMABLE:
                    raise
            self.resumes += 1
            await asyncio.sleep(0.2)


async def dispatch_until_accepted(target: str, index: int) -> str:
    """One dispatch, retried across gateway deaths with the same idempotency key."""
    service, *chain = EVERY_SERVICE[index % len(EVERY_SERVICE)]
    request = request_for(service, chain=tuple(chain))
    request.idempotency_key = f"fault-suite-{index}"
    while True:
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.DispatchServiceStub(channel)
                response = await stub.Dispatch(request, timeout=5)
                return response.job.job_id
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (*RESUMABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.2)


@pytest.mark.timeout(RUN_TIMEOUT + 120)
# GATEWAY_WORKERS: one process, or two on one store (SIGKILL of the parent takes both).
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "sandbox_options",
    [
        {
            "time_factor": 0.005,
            "rate_window": RATE_WINDOW,
            "seed": 7,
            "sync_delay": 0.0,
            "sync_delay_max": SYNC_DELAY_MAX,
        }
    ],
)
async def test_nothing_lost_nothing_twice_under_faults(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, workers: int
) -> None:
    sandbox.sandbox.faults.update(FAULTS)
    env = gateway_env(sandbox, tls, tmp_path)
    env |= {
        "GATEWAY_UPSTREAM_RATE": f"{RATE_LIMIT}/{RATE_WINDOW:g}s",
        "GATEWAY_SUBMIT_TIMEOUT": "1",
        "GATEWAY_SYNC_TIMEOUT": f"{SYNC_TIMEOUT:g}",
        "GATEWAY_CALLBACK_DEADLINES": f"esign={CALLBACK_DEADLINE:g},postal={CALLBACK_DEADLINE:g}",
        "GATEWAY_BREAKER_OPEN_FOR": "1",
        "GATEWAY_RETRY_BASE": "0.05",
        "GATEWAY_RETRY_MAX_DELAY": "1",
        "GATEWAY_WORKERS": str(workers),
    }
    gateway = gateway_process(env, tmp_path / "gateway.log")
    target = env["GATEWAY_GRPC_ADDR"]
    started = time.monotonic()
    await gateway.start()
    subscriber = Subscriber(target)
    following = asyncio.create_task(subscriber.run())
    try:
        accepted: list[str] = []
        slots = asyncio.Semaphore(CONCURRENCY)
        kills = 0

        async def one(index: int) -> None:
            async with slots:
                accepted.append(await dispatch_until_accepted(target, index))

        dispatching = [asyncio.create_task(one(i)) for i in range(N)]
        for threshold in KILLS_AT:
            while len(accepted) < threshold:
                await asyncio.sleep(0.05)
            await gateway.kill()
            kills += 1
            await gateway.start()
        await asyncio.gather(*dispatching)
        job_ids = set(accepted)
        assert len(job_ids) == N

        async with asyncio.timeout(RUN_TIMEOUT):
            while not job_ids <= set(subscriber.terminal):
                await asyncio.sleep(1.0)
                done = len(job_ids & set(subscriber.terminal))
                log.warning("%.0f s: %d/%d jobs ended", time.monotonic() - started, done, N)
        await asyncio.sleep(1.0)  # late duplicates, if any were to slip through, land now
        elapsed = time.monotonic() - started

        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            states = collections.Counter()
            ends: collections.Counter[str] = collections.Counter()
            token = ""
            while True:
                page = await stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token))
                states.update(pb.JobState.Name(j.state) for j in page.jobs)
                ends.update(
                    j.error.code if j.error.code in ("callback_overdue",) else j.last_event
                    for j in page.jobs
                )
                token = page.next_page_token
                if not token:
                    break
        stats = sandbox.sandbox.stats()
        outcomes = collections.Counter(
            str(outcome)
            for record in sandbox.sandbox.dispatches
            for webhook in record.webhooks
            for outcome in webhook.outcomes
        )
        log.warning(
            "fault suite: N=%d kills=%d resumes=%d elapsed=%.1fs states=%s sandbox=%s",
            N,
            kills,
            subscriber.resumes,
            elapsed,
            dict(states),
            stats,
        )
        print(
            f"\nfault suite: workers={workers}, N={N}, kills={kills}, "
            f"subscriber resumes={subscriber.resumes}, "
            f"{elapsed:.1f} s; upstream requests={stats.dispatch_requests} "
            f"(retries {stats.dispatch_requests - N}), by status={stats.by_status}, "
            f"max in {RATE_WINDOW:g} s={stats.max_in_window}/{RATE_LIMIT}, "
            f"webhooks sent={stats.webhooks_sent} failed={stats.webhooks_failed}; "
            f"states={dict(states)}; ended by={dict(ends)}; webhook outcomes={dict(outcomes)}"
        )
        # Every job ended, and the subscriber saw each end exactly once, in cursor order.
        assert sum(states.values()) == N
        assert set(states) <= {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"}
        assert set(subscriber.terminal.values()) == {1}
        assert subscriber.cursors == sorted(set(subscriber.cursors))
        # The upstream dispatched each job once, and never saw more than the configured rate.
        assert stats.dispatches == N
        keys = collections.Counter(d.idempotency_key for d in sandbox.sandbox.dispatches)
        assert set(keys) == job_ids
        assert set(keys.values()) == {1}
        # Each way of ending happened: the case under test was not missed.
        assert {"dispatch_completed", "callback_overdue", "document_signed"} <= set(ends)
        assert stats.max_in_window <= RATE_LIMIT
        assert kills == 2
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await gateway.close()
