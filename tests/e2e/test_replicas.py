"""Three gateway processes sharing a three-node NATS JetStream cluster, as replicas behind one
Kubernetes Service: dispatches spread over them, every webhook posted through a load balancer
to a random replica, subscribers on other replicas than the one dispatched to. During the run one
replica is killed with SIGKILL (and restarted later) and one NATS node is stopped.

Afterwards every job's terminal event reached every subscriber exactly once, in cursor order;
the sandbox counted each dispatch once; and the upstream rate, summed over the replicas, stayed
within the configured limit."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from tests.support.balancer import Balancer
from tests.support.clients import Dispatcher, Subscriber, cancel
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory
from tests.support.process import ServerProcess, gateway_env, gateway_process
from tests.support.requests import request_for

log = logging.getLogger(__name__)

REPLICAS = 3
N = 300
RATE_LIMIT, RATE_WINDOW = 30, 2.0
"""The account's limit. The gateways widen the window by at least 1 s (RateGate): 30 per 3 s,
10 a second, so the upstream side takes about 30 s."""
DISPATCH_RATE = 12.0
"""Dispatch calls a second, a little faster than the upstream rate: a backlog builds up, and
calls keep coming while a replica dies and a NATS node stops."""
CONCURRENCY = 20
KILL_AT, NATS_STOP_AT, RESTART_AT = N // 4, N // 2, 3 * N // 4
"""Accepted dispatches at which one replica is killed, one NATS node stopped, and the killed
replica started again (with that node still down)."""
SUBMIT_TIMEOUT = 2.0
"""Also shortens the outbox lease's visibility: the entries the killed replica held come back
after the rate window + this + 30 s."""
RUN_TIMEOUT = 120.0
START_ATTEMPTS = 3
SERVICES = (pb.SERVICE_EMAIL, pb.SERVICE_POSTAL, pb.SERVICE_ESIGN, pb.SERVICE_SMS)


async def start(gateway: ServerProcess) -> None:
    """Start a replica as Kubernetes would: again if it exits at start-up (a new NATS cluster
    may refuse to place a replicated stream until its meta leader has seen every peer)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            await gateway.start()
            return
        except RuntimeError:
            if attempt == START_ATTEMPTS:
                raise
            log.warning("replica exited at start-up; starting it again")


async def replicas(
    sandbox: RunningSandbox,
    tls: TlsFiles,
    tmp_path: Path,
    nats_url: str,
    settings: dict[str, str],
) -> tuple[list[ServerProcess], Balancer]:
    """REPLICAS gateway processes (not started) on the NATS cluster, behind one balancer that
    takes the webhooks: one public URL for all, as Dispatcher calls back through the Service."""
    envs = [gateway_env(sandbox, tls, tmp_path) for _ in range(REPLICAS)]
    balancer = Balancer(
        [("127.0.0.1", int(env["GATEWAY_WEBHOOK_ADDR"].rpartition(":")[2])) for env in envs]
    )
    await balancer.start()
    gateways = [
        gateway_process(
            env
            | {
                "GATEWAY_STORE": nats_url,
                "GATEWAY_NATS_REPLICAS": "3",
                "GATEWAY_PUBLIC_URL": f"https://127.0.0.1:{balancer.port}",
                **settings,
            },
            tmp_path / f"gateway-{i}.log",
        )
        for i, env in enumerate(envs)
    ]
    return gateways, balancer


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize(
    # A connection per webhook: the balancer sends each one to a random replica.
    "sandbox_options",
    [{"rate_window": RATE_WINDOW, "seed": 11, "webhook_keepalive": False}],
)
async def test_three_replicas_on_a_nats_cluster_lose_nothing_and_share_the_rate(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    started = time.monotonic()
    nats = start_nats_server(nodes=3)
    gateways, balancer = await replicas(
        sandbox,
        tls,
        tmp_path,
        nats.url,
        {
            "GATEWAY_UPSTREAM_RATE": f"{RATE_LIMIT}/{RATE_WINDOW:g}s",
            "GATEWAY_SUBMIT_TIMEOUT": f"{SUBMIT_TIMEOUT:g}",
            # Email and SMS are sent in sync mode (they never call back): as short.
            "GATEWAY_SYNC_TIMEOUT": f"{SUBMIT_TIMEOUT:g}",
        },
    )
    targets = [gateway.env["GATEWAY_GRPC_ADDR"] for gateway in gateways]
    dispatcher = Dispatcher(targets)
    # Subscriber i starts on replica i; the dispatcher's round robin sends two jobs in three
    # to another replica than the one each subscriber is on.
    subscribers = [Subscriber(targets[i:] + targets[:i]) for i in range(REPLICAS)]
    following: list[asyncio.Task[None]] = []
    dispatching: list[asyncio.Task[None]] = []
    try:
        # The first creates the streams and buckets; the others find them.
        await start(gateways[0])
        await asyncio.gather(*(start(gateway) for gateway in gateways[1:]))
        following = [asyncio.create_task(s.run()) for s in subscribers]
        run_started = time.monotonic()

        accepted: list[str] = []
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(index: int) -> None:
            await asyncio.sleep(index / DISPATCH_RATE)
            request = request_for(SERVICES[index % len(SERVICES)])
            request.idempotency_key = f"replicas-{index}"
            async with slots:
                accepted.append(await dispatcher.until_accepted(request))

        async def reached(count: int) -> None:
            while len(accepted) < count:
                await asyncio.sleep(0.05)

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                ended = [len(set(accepted) & set(s.terminal)) for s in subscribers]
                log.warning(
                    "%.0f s: %d/%d accepted, ended at each subscriber %s",
                    time.monotonic() - run_started,
                    len(accepted),
                    N,
                    ended,
                )

        dispatching = [asyncio.create_task(one(i)) for i in range(N)]
        following.append(asyncio.create_task(progress()))
        victim = gateways[0]
        # Bounded as a whole: a dispatch that never gets through fails the test, not hangs it.
        async with asyncio.timeout(RUN_TIMEOUT):
            await reached(KILL_AT)
            await victim.kill()
            kills = 1
            await reached(NATS_STOP_AT)
            await asyncio.to_thread(nats.nodes[1].stop)
            nats_stops = 1
            await reached(RESTART_AT)
            await start(victim)
            await asyncio.gather(*dispatching)
            job_ids = set(accepted)
            assert len(job_ids) == N
            while not all(job_ids <= set(s.terminal) for s in subscribers):
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # late duplicates, if any were to slip through, land now
        elapsed = time.monotonic() - run_started

        stats = sandbox.sandbox.stats()
        upstream_keys = collections.Counter(d.idempotency_key for d in sandbox.sandbox.dispatches)
        outcomes = collections.Counter(
            str(outcome)
            for record in sandbox.sandbox.dispatches
            for webhook in record.webhooks
            for outcome in webhook.outcomes
        )
        terminal_cursor = [
            {event.job_id: event.cursor for event, _ in s.events if event.terminal}
            for s in subscribers
        ]
        # A terminal event sent to a subscriber by another replica than the job's dispatcher.
        elsewhere = sum(
            1
            for s in subscribers
            for event, target in s.events
            if event.terminal and target != dispatcher.accepted_by[event.job_id]
        )
        print(
            f"\nreplicas: N={N}, replicas={REPLICAS}, NATS nodes=3 (R3), kills={kills}, "
            f"NATS node stops={nats_stops}, subscriber resumes="
            f"{[s.resumes for s in subscribers]}, dispatch refusals={dict(dispatcher.refused)}, "
            f"accepted by replica={collections.Counter(dispatcher.accepted_by.values())}, "
            f"terminal events via another replica than the dispatch's={elsewhere}/{N * REPLICAS}, "
            f"webhooks by replica port={balancer.connections}, "
            f"upstream requests={stats.dispatch_requests} (dispatches {stats.dispatches}), "
            f"max in {RATE_WINDOW:g} s={stats.max_in_window}/{RATE_LIMIT}, "
            f"webhooks sent={stats.webhooks_sent} failed={stats.webhooks_failed} "
            f"(outcomes {dict(outcomes)}), "
            f"elapsed={elapsed:.1f} s ({time.monotonic() - started:.1f} s with start-up)"
        )
        # Every terminal event reached every subscriber exactly once, in cursor order, and it
        # is the same event (the same cursor) for all of them.
        for s in subscribers:
            assert set(s.terminal) == job_ids
            assert set(s.terminal.values()) == {1}
            assert s.cursors == sorted(set(s.cursors))
        assert terminal_cursor[0] == terminal_cursor[1] == terminal_cursor[2]
        # Work really was spread: calls answered and webhooks taken by every replica, events
        # streamed by other replicas than the one dispatched to.
        assert set(dispatcher.accepted_by.values()) == set(targets)
        assert set(balancer.connections) == {port for _, port in balancer.backends}
        assert sum(balancer.connections.values()) == stats.webhooks_sent
        assert elsewhere > 0
        # No webhook met a bug (500): only the kill and the NATS node's stop failed any.
        assert "500" not in outcomes
        # Each job dispatched upstream once, and the summed rate within the account's limit.
        assert stats.dispatches == N
        assert set(upstream_keys) == job_ids
        assert stats.max_in_window <= RATE_LIMIT
    finally:
        await cancel(*dispatching, *following)
        for gateway in gateways:
            await gateway.close()
        await balancer.close()


OVERDUE_JOBS = 12
DEADLINE = 2.0
"""Seconds a job waits for its terminal webhook: the sandbox calls back after LATE."""
LATE = 5.0


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize(
    "sandbox_options", [{"seed": 5, "webhook_keepalive": False, "event_delay": LATE}]
)
async def test_a_job_whose_webhook_is_overdue_ends_once_across_three_replicas(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server(nodes=3)
    gateways, balancer = await replicas(
        sandbox,
        tls,
        tmp_path,
        nats.url,
        {"GATEWAY_CALLBACK_DEADLINES": f"esign={DEADLINE:g},postal={DEADLINE:g}"},
    )
    targets = [gateway.env["GATEWAY_GRPC_ADDR"] for gateway in gateways]
    dispatcher = Dispatcher(targets)
    subscribers = [Subscriber(targets[i:] + targets[:i]) for i in range(REPLICAS)]
    following: list[asyncio.Task[None]] = []
    try:
        await start(gateways[0])
        await asyncio.gather(*(start(gateway) for gateway in gateways[1:]))
        following = [asyncio.create_task(s.run()) for s in subscribers]
        job_ids = set()
        for index in range(OVERDUE_JOBS):
            service = (pb.SERVICE_ESIGN, pb.SERVICE_POSTAL)[index % 2]
            request = request_for(service)
            request.idempotency_key = f"overdue-{index}"
            job_ids.add(await dispatcher.until_accepted(request))

        def late_ends(subscriber: Subscriber) -> set[str]:
            return {
                e.job_id
                for e, _ in subscriber.events
                if e.type in ("document_signed", "letter_delivered")
            }

        async with asyncio.timeout(RUN_TIMEOUT - 30):
            while not all(late_ends(s) >= job_ids for s in subscribers):
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a second end, were one to slip through, lands now

        overdue_by = collections.Counter(
            gateway.env["GATEWAY_GRPC_ADDR"]
            for gateway in gateways
            for line in gateway.log_path.read_text().splitlines()
            if "no terminal webhook came" in line
        )
        print(
            f"\noverdue: jobs={len(job_ids)}, replicas={REPLICAS}, deadline={DEADLINE:g} s, "
            f"webhooks after {LATE:g} s; overdue failures by replica={dict(overdue_by)}; "
            f"events per subscriber={[len(s.events) for s in subscribers]}"
        )
        for subscriber in subscribers:
            ends = {e.job_id: e for e, _ in subscriber.events if e.terminal}
            assert set(subscriber.terminal) == job_ids
            assert set(subscriber.terminal.values()) == {1}
            assert {(e.type, e.state) for e in ends.values()} == {("failed", pb.JOB_STATE_FAILED)}
            assert {e.data["code"] for e in ends.values()} == {"callback_overdue"}
            failed = collections.Counter(
                e.job_id for e, _ in subscriber.events if e.type == "failed"
            )
            assert set(failed.values()) == {1}
            late = [
                e for e, _ in subscriber.events if e.type in ("document_signed", "letter_delivered")
            ]
            assert len(late) == len(job_ids)
            assert not any(e.terminal for e in late)
            assert {e.state for e in late} == {pb.JOB_STATE_FAILED}
        assert sum(overdue_by.values()) == len(job_ids)
    finally:
        await cancel(*following)
        for gateway in gateways:
            await gateway.close()
        await balancer.close()
