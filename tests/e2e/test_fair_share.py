"""The fair share of the upstream rate across three gateway replicas on a three-node NATS
cluster: client A queues 2,000 jobs, then client B 50 with the same weight. B's jobs go out
within about twice their fair share (half the requests sent while A has a backlog), a
PRIORITY_HIGH job of A overtakes A's own backlog, and the account's rate, summed over the
replicas, is never exceeded where the sandbox counts it. Figures from the sandbox's request log
are printed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.rpc.clients import client_line, new_token
from tests.support.balancer import Balancer
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory
from tests.support.process import ServerProcess, gateway_env, gateway_process
from tests.support.requests import request_for

log = logging.getLogger(__name__)

REPLICAS = 3
A_JOBS, B_JOBS = 2000, 50
RATE_LIMIT, RATE_WINDOW = 120, 10.0
"""The account's limit: the gateways widen the window by 1 s (RateGate), 120 per 11 s, about
11 a second; B's fair share is half of it while A has a backlog."""
EFFECTIVE_RATE = RATE_LIMIT / (RATE_WINDOW + 1.0)
CONCURRENCY = 64
"""Dispatch calls in flight at once while a client queues."""
FAIR_SLACK = 2.0
"""B's jobs must all be sent within this many times their fair share of the requests sent."""
RUN_TIMEOUT = 150.0
START_ATTEMPTS = 3


class Client:
    """One client of the gateway: a channel to each replica, its token on every call."""

    def __init__(self, targets: Sequence[str], token: str) -> None:
        self._channels = [grpc.aio.insecure_channel(t) for t in targets]
        self._stubs = [pb_grpc.DispatchServiceStub(c) for c in self._channels]
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._turn = 0

    async def dispatch(self, request: pb.DispatchRequest) -> pb.DispatchResponse:
        stub = self._stubs[self._turn % len(self._stubs)]
        self._turn += 1
        response: pb.DispatchResponse = await stub.Dispatch(
            request, metadata=self._metadata, timeout=30.0
        )
        return response

    async def queue(self, count: int, name: str) -> list[pb.DispatchResponse]:
        """`count` async email jobs, in order of acceptance."""
        slots = asyncio.Semaphore(CONCURRENCY)
        answers: list[pb.DispatchResponse] = []

        async def one(index: int) -> None:
            request = request_for(pb.SERVICE_EMAIL)
            request.idempotency_key = f"{name}-{index}"
            async with slots:
                answers.append(await self.dispatch(request))

        await asyncio.gather(*(one(i) for i in range(count)))
        return answers

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@contextlib.asynccontextmanager
async def cluster(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, nats_url: str, clients: str
) -> AsyncIterator[list[ServerProcess]]:
    envs = [gateway_env(sandbox, tls, tmp_path) for _ in range(REPLICAS)]
    balancer = Balancer(
        [("127.0.0.1", int(env["GATEWAY_WEBHOOK_ADDR"].rpartition(":")[2])) for env in envs]
    )
    await balancer.start()
    clients_file = tmp_path / "clients"
    clients_file.write_text(clients)
    gateways = [
        gateway_process(
            env
            | {
                "GATEWAY_STORE": nats_url,
                "GATEWAY_NATS_REPLICAS": "3",
                "GATEWAY_PUBLIC_URL": f"https://127.0.0.1:{balancer.port}",
                "GATEWAY_UPSTREAM_RATE": f"{RATE_LIMIT}/{RATE_WINDOW:g}s",
                "GATEWAY_CLIENT_TOKENS_FILE": str(clients_file),
                # A queues as fast as it can: not the point here.
                "GATEWAY_CLIENT_DISPATCH_RATE": "1000/1s",
            },
            tmp_path / f"gateway-{i}.log",
        )
        for i, env in enumerate(envs)
    ]
    try:
        for gateway in gateways:  # the first creates the streams and buckets
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    await gateway.start()
                    break
                except RuntimeError:
                    if attempt == START_ATTEMPTS:
                        raise
                    log.warning("replica exited at start-up; starting it again")
        yield gateways
    finally:
        for gateway in gateways:
            await gateway.close()
        await balancer.close()


def sent_at(sandbox: RunningSandbox) -> dict[str, float]:
    """Job id -> when its first request reached the sandbox (wall clock)."""
    first: dict[str, float] = {}
    for entry in sandbox.sandbox.request_log.entries:
        first.setdefault(entry.idempotency_key, entry.received_at)
    return first


async def until_sent(sandbox: RunningSandbox, job_ids: set[str]) -> dict[str, float]:
    while not job_ids <= set(sent := sent_at(sandbox)):
        await asyncio.sleep(0.1)
    return sent


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize(
    "sandbox_options",
    [{"rate_window": RATE_WINDOW, "rate_limit": RATE_LIMIT, "seed": 14}],
)
async def test_a_late_client_gets_its_share_and_a_high_priority_job_overtakes(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server(nodes=3)
    token_a, token_b = new_token(), new_token()
    lines = f"{client_line('a', token_a)}\n{client_line('b', token_b)}\n"
    async with cluster(sandbox, tls, tmp_path, nats.url, lines) as gateways:
        targets = [g.env["GATEWAY_GRPC_ADDR"] for g in gateways]
        a, b = Client(targets, token_a), Client(targets, token_b)
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                a_started = time.time()
                a_answers = await a.queue(A_JOBS, "a")
                b_started = time.time()
                b_answers = await b.queue(B_JOBS, "b")
                b_queued = time.time()
                b_ids = {r.job.job_id for r in b_answers}
                sent = await until_sent(sandbox, b_ids)
                high_request = request_for(pb.SERVICE_EMAIL)
                high_request.priority = pb.PRIORITY_HIGH
                high_queued = time.time()
                high = await a.dispatch(high_request)
                sent = await until_sent(sandbox, {high.job.job_id})
                high_sent = sent[high.job.job_id]
        finally:
            await a.close()
            await b.close()
        # What the sandbox saw of the run, before the replicas are killed (the teardown's
        # SIGKILL may cut a request mid-body, which the sandbox answers 400
        # client_disconnected: not the run's).
        stats = sandbox.sandbox.stats()
        entries = list(sandbox.sandbox.request_log.entries)

    a_ids = {r.job.job_id for r in a_answers}
    b_sent = sorted(sent[j] for j in b_ids)
    b_span = b_sent[-1] - b_started
    fair = B_JOBS / (EFFECTIVE_RATE / 2)
    a_during_b = sum(1 for j in a_ids if j in sent and b_started <= sent[j] <= b_sent[-1])
    a_before_high = sum(1 for j in a_ids if j in sent and high_queued <= sent[j] <= high_sent)
    a_left_at_high = sum(1 for j in a_ids if j not in sent or sent[j] > high_sent)
    b_ahead = sorted(r.estimate.jobs_ahead for r in b_answers)
    b_expected = max(r.estimate.expected_submit_time.ToDatetime().timestamp() for r in b_answers)
    last_a = max(a_answers, key=lambda r: r.estimate.jobs_ahead)
    print(
        f"\nfair share: replicas={REPLICAS}, rate={RATE_LIMIT}/{RATE_WINDOW:g}s "
        f"(~{EFFECTIVE_RATE:.1f}/s), A queued {A_JOBS} in {b_started - a_started:.1f} s, "
        f"B queued {B_JOBS} in {b_queued - b_started:.1f} s; "
        f"B's jobs sent {b_sent[0] - b_started:.1f}..{b_span:.1f} s after B began "
        f"(fair share {fair:.1f} s, x{b_span / fair:.2f}); "
        f"A's jobs sent meanwhile: {a_during_b} (B's {B_JOBS}: "
        f"x{(a_during_b + B_JOBS) / (2 * B_JOBS):.2f} their fair share of the requests); "
        f"B's estimates: jobs_ahead {b_ahead[0]}..{b_ahead[-1]}, the last expected "
        f"{b_expected - b_started:.1f} s after B began; "
        f"A's largest estimate: {last_a.estimate.jobs_ahead} ahead, "
        f"{last_a.estimate.expected_submit_time.ToDatetime().timestamp() - a_started:.0f} s; "
        f"A's HIGH job sent {high_sent - high_queued:.1f} s after queued, "
        f"{a_before_high} of A's jobs sent in between, {a_left_at_high} of A's left behind it; "
        f"upstream requests={stats.dispatch_requests}, by status={stats.by_status}, "
        f"max in {RATE_WINDOW:g} s={stats.max_in_window}/{RATE_LIMIT}"
    )
    refused = [
        (e.path, e.status, e.idempotency_key in a_ids, e.idempotency_key in b_ids)
        for e in entries
        if e.status not in (200, 202)
    ]
    print(f"requests not answered 2xx (path, status, A's, B's): {refused}")
    timeline = [
        (
            sum(1 for j in a_ids if j in sent and b_started + t <= sent[j] < b_started + t + 1),
            sum(1 for j in b_ids if b_started + t <= sent[j] < b_started + t + 1),
        )
        for t in range(int(b_span) + 1)
    ]
    print(f"sent each second after B began (A's, B's): {timeline}")
    # Time in the account's slots: the sliding window lets the rate come in bursts (120 at
    # once, then nothing until they age out), and a job leased as one ends waits for the next
    # (an 11 s window here). B's fair share is half the requests sent while it has jobs queued.
    assert a_during_b + B_JOBS <= FAIR_SLACK * 2 * B_JOBS
    # The HIGH job overtakes A's backlog: only what the workers had leased before it, and what
    # the replicas that had not yet seen its lane sent meanwhile (within CLIENTS_FRESHNESS),
    # goes out between its queueing and its sending.
    assert a_left_at_high > A_JOBS // 2
    assert a_before_high < A_JOBS // 20
    assert stats.max_in_window <= RATE_LIMIT
    assert set(stats.by_status) <= {200, 202}
