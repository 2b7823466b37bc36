"""NATS stopped for ten seconds under load, then started again: webhooks sent meanwhile get 503
and arrive on the sandbox's retries; nothing acknowledged is lost; readiness (/readyz and gRPC
health) is NOT_SERVING during the outage and SERVING after, and the gateway is never restarted."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from tests.support.clients import RETRYABLE, Dispatcher, HealthLog, Subscriber, cancel
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory
from tests.support.process import gateway_env, gateway_process
from tests.support.requests import request_for

OUTAGE = 10.0
"""Seconds NATS is away."""
BEFORE, AFTER = 3.0, 3.0
"""Seconds of load before the outage and after NATS is back."""
SENDERS, SEND_PAUSE = 4, 0.2
"""Callers dispatching at once, each pausing this long between its calls: about 20 a second."""
EVENT_DELAY = 1.0
"""Seconds from a dispatch to its first webhook: those dispatched just before the outage
call back during it."""
TIME_FACTOR = 0.0015
"""The sandbox's webhook retries come 7.5 ms, 0.45 s, 2.7 s and 10.8 s after a failure: one
failing anywhere in a 10 s outage has a retry after it within about 14 s."""
FINISH_TIMEOUT = 60.0
SERVICES = (pb.SERVICE_EMAIL, pb.SERVICE_POSTAL, pb.SERVICE_SMS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sandbox_options", [{"time_factor": TIME_FACTOR, "event_delay": EVENT_DELAY}]
)
async def test_a_nats_outage_under_load_loses_nothing_acknowledged(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server()
    env = gateway_env(sandbox, tls, tmp_path) | {
        "GATEWAY_STORE": nats.url,
        "GATEWAY_SUBMIT_TIMEOUT": "2",
    }
    admin_port = int(env["GATEWAY_ADMIN_ADDR"].rpartition(":")[2])
    gateway = gateway_process(env, tmp_path / "gateway.log")
    target = env["GATEWAY_GRPC_ADDR"]
    await gateway.start()

    dispatcher = Dispatcher([target])
    subscriber = Subscriber([target])
    health = HealthLog(target, f"http://127.0.0.1:{admin_port}")
    accepted: list[str] = []
    numbers = itertools.count()
    sending = True

    async def send() -> None:
        # Each call once, with no retry: what matters is what was answered OK.
        while sending:
            index = next(numbers)
            request = request_for(SERVICES[index % len(SERVICES)])
            request.idempotency_key = f"outage-{index}"
            try:
                accepted.append(await dispatcher.once(target, request))
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
            await asyncio.sleep(SEND_PAUSE)

    background = [
        asyncio.create_task(subscriber.run()),
        asyncio.create_task(health.run()),
    ]
    senders = [asyncio.create_task(send()) for _ in range(SENDERS)]
    try:
        await asyncio.sleep(BEFORE)
        # Each of stop and start takes a while (a clean shutdown; the wait until JetStream is
        # ready), and the gateway may notice before it returns: note when each began.
        stopping = time.monotonic()
        await asyncio.to_thread(nats.stop)
        stopped = time.monotonic()
        async with asyncio.timeout(FINISH_TIMEOUT):
            noticed_down = await health.until("NOT_SERVING", 503, after=stopping)
        await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - stopping)))
        restarting = time.monotonic()
        await asyncio.to_thread(nats.start)
        async with asyncio.timeout(FINISH_TIMEOUT):
            noticed_up = await health.until("SERVING", 200, after=restarting)
        await asyncio.sleep(AFTER)
        sending = False
        await asyncio.gather(*senders)

        async with asyncio.timeout(FINISH_TIMEOUT):
            while not set(accepted) <= set(subscriber.terminal):
                await asyncio.sleep(0.2)
            await sandbox.sandbox.wait_for_webhooks(FINISH_TIMEOUT)
        ended = time.monotonic()
        async with asyncio.timeout(FINISH_TIMEOUT):
            await health.polled_after(ended)

        stats = sandbox.sandbox.stats()
        webhooks = [w for d in sandbox.sandbox.dispatches for w in d.webhooks]
        outcomes = collections.Counter(str(o) for w in webhooks for o in w.outcomes)
        answered_ok = {
            (d.dispatch_id, w.event)
            for d in sandbox.sandbox.dispatches
            for w in d.webhooks
            if 200 in w.outcomes
        }
        stored = {(event.dispatch_id, event.type) for event, _ in subscriber.events}
        upstream_keys = collections.Counter(d.idempotency_key for d in sandbox.sandbox.dispatches)
        print(
            f"\nNATS outage: {OUTAGE:g} s; dispatches answered OK={len(accepted)}, "
            f"refused={dict(dispatcher.refused)}; upstream dispatches={stats.dispatches}; "
            f"webhooks={len(webhooks)}, outcomes={dict(outcomes)}; "
            f"subscriber resumes={subscriber.resumes}; health={[s for _, s in health.statuses]}; "
            f"{ended - stopped:.1f} s from the stop to the end"
        )

        # Webhooks sent during the outage were refused with 503, retried, and all arrived.
        assert outcomes["503"] > 0
        assert stats.webhooks_given_up == 0
        assert all(w.delivered >= 1 for w in webhooks)
        # Nothing acknowledged is lost: each webhook answered 200 is in the store, each job
        # answered OK reached its terminal event, once, and was dispatched upstream once.
        assert answered_ok <= stored
        assert set(accepted) <= set(subscriber.terminal)
        assert set(subscriber.terminal.values()) == {1}
        assert subscriber.cursors == sorted(set(subscriber.cursors))
        assert set(accepted) <= set(upstream_keys)
        assert set(upstream_keys.values()) == {1}
        # Dispatches during the outage were refused as retryable.
        assert dispatcher.refused["UNAVAILABLE"] > 0
        # Readiness followed the store: SERVING before; from when the gateway noticed the
        # outage, NOT_SERVING throughout it; from when it noticed NATS back, SERVING to the end.
        assert health.status_at(stopping) == "SERVING"
        assert noticed_down < restarting
        down = health.statuses_between(noticed_down, restarting)
        assert {health.status_at(noticed_down), *down} == {"NOT_SERVING"}
        assert set(health.readyz_between(noticed_down, restarting)) == {503}
        up = health.statuses_between(noticed_up, ended)
        assert {health.status_at(noticed_up), *up} == {"SERVING"}
        assert set(health.readyz_between(noticed_up, float("inf"))) == {200}
        # By itself: the same process all along.
        assert gateway.starts == 1
        assert gateway.returncode is None
    finally:
        sending = False
        await cancel(*senders, *background)
        await gateway.close()
