"""A rolling restart on NATS, as a Deployment does it: three replicas replaced one by one, each
by a new one that is ready first; the old one is taken out of the balancer (its endpoints
removed), then sent SIGTERM. Meanwhile clients dispatch over long-lived channels (every third
call MODE_SYNC, so that a draining replica has calls in flight) and subscribe, all through one
balancer, as through a Kubernetes Service.

Afterwards no subscriber lost or repeated an event, no dispatch was refused with anything but
UNAVAILABLE (never CANCELLED, which grpcio's own shutdown answers to calls reaching it), and each
old replica let go of its clients' connections within its drain's grace: the drain closes each as
soon as its calls in flight end, and the client reconnects, through the balancer, to a new
replica. The figures printed: refusals, drain times, when the connections left."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from pathlib import Path

import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway import app, httpserver
from tests.support.balancer import Balancer
from tests.support.clients import ChannelDispatcher, Subscriber, cancel
from tests.support.loopback import HOST, RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory
from tests.support.ports import free_port
from tests.support.process import ServerProcess, gateway_env, gateway_process
from tests.support.requests import request_for

REPLICAS = 3
MIN_DISPATCHES = 60
"""Dispatches accepted before the first replacement, and at least this many after the last."""
CONCURRENCY = 6
CHANNELS = 2
"""The dispatchers' long-lived channels: each a connection through the balancer."""
STORE_CLOSE = 5.0
GRACE = app.DRAIN_GRACE + app.STATUS_FLUSH + httpserver.SHUTDOWN_GRACE + STORE_CLOSE
"""Seconds an old replica may take from SIGTERM to its exit: its drain, the HTTP listeners',
the store's close (the manifests' termination grace covers the same sum)."""
SYNC_DELAY = 2.0
"""Seconds the upstream takes to answer a sync call."""
DISPATCH_TIMEOUT = 10.0
POLL = 0.02
RUN_TIMEOUT = 150.0
SERVICES = (pb.SERVICE_EMAIL, pb.SERVICE_POSTAL, pb.SERVICE_ESIGN, pb.SERVICE_SMS)


def port_of(addr: str) -> int:
    return int(addr.rpartition(":")[2])


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize(
    "sandbox_options",
    [{"seed": 12, "webhook_keepalive": False, "event_delay": 0.5, "sync_delay": SYNC_DELAY}],
)
async def test_a_rolling_restart_loses_no_event_and_refuses_only_unavailable(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server(nodes=3)
    webhooks = Balancer([])
    grpc_balancer = Balancer([])
    await webhooks.start()
    await grpc_balancer.start()

    def replica(name: str) -> ServerProcess:
        env = gateway_env(sandbox, tls, tmp_path) | {
            "GATEWAY_GRPC_ADDR": f"{HOST}:{free_port()}",
            "GATEWAY_WEBHOOK_ADDR": f"{HOST}:{free_port()}",
            "GATEWAY_ADMIN_ADDR": f"{HOST}:{free_port()}",
            "GATEWAY_STORE": nats.url,
            "GATEWAY_NATS_REPLICAS": "3",
            "GATEWAY_PUBLIC_URL": f"https://127.0.0.1:{webhooks.port}",
        }
        process = gateway_process(env, tmp_path / f"{name}.log")
        process.name = name
        return process

    def grpc_port(gateway: ServerProcess) -> int:
        return port_of(gateway.env["GATEWAY_GRPC_ADDR"])

    def endpoints(gateway: ServerProcess) -> tuple[tuple[str, int], tuple[str, int]]:
        webhook_port = port_of(gateway.env["GATEWAY_WEBHOOK_ADDR"])
        return ("127.0.0.1", grpc_port(gateway)), ("127.0.0.1", webhook_port)

    def add(gateway: ServerProcess) -> None:
        grpc_end, webhook_end = endpoints(gateway)
        grpc_balancer.backends.append(grpc_end)
        webhooks.backends.append(webhook_end)

    def remove(gateway: ServerProcess) -> None:
        grpc_end, webhook_end = endpoints(gateway)
        grpc_balancer.backends.remove(grpc_end)
        webhooks.backends.remove(webhook_end)

    async def connections_gone(port: int) -> None:
        while grpc_balancer.open.get(port, 0):
            await asyncio.sleep(POLL)

    old = [replica(f"old-{i}") for i in range(REPLICAS)]
    new: list[ServerProcess] = []
    target = f"127.0.0.1:{grpc_balancer.port}"
    dispatchers = [ChannelDispatcher(target) for _ in range(CHANNELS)]
    subscribers = [Subscriber([target]) for _ in range(REPLICAS)]
    following: list[asyncio.Task[None]] = []
    dispatching: list[asyncio.Task[None]] = []
    drains: list[float] = []
    moved_off: list[float] = []
    accepted: list[str] = []
    replaced = asyncio.Event()
    numbers = itertools.count()
    try:
        await old[0].start()
        await asyncio.gather(*(gateway.start() for gateway in old[1:]))
        for gateway in old:
            add(gateway)
        following = [asyncio.create_task(s.run()) for s in subscribers]

        async def dispatch(worker: int) -> None:
            # Until the replicas are replaced and MIN_DISPATCHES more were accepted after.
            after = 0
            while not replaced.is_set() or len(accepted) < after + MIN_DISPATCHES:
                if replaced.is_set() and not after:
                    after = len(accepted)
                index = next(numbers)
                request = request_for(SERVICES[index % len(SERVICES)])
                request.idempotency_key = f"rolling-{index}"
                if index % 3 == 0:
                    request.mode = pb.MODE_SYNC
                dispatcher = dispatchers[worker % CHANNELS]
                accepted.append(await dispatcher.until_accepted(request, DISPATCH_TIMEOUT))

        async def reached(count: int) -> None:
            while len(accepted) < count:
                await asyncio.sleep(POLL)

        dispatching = [asyncio.create_task(dispatch(i)) for i in range(CONCURRENCY)]
        async with asyncio.timeout(RUN_TIMEOUT):
            await reached(MIN_DISPATCHES)
            for index, leaving in enumerate(old):
                replacement = replica(f"new-{index}")
                await replacement.start()
                new.append(replacement)
                add(replacement)
                # Endpoints removed, then SIGTERM (the balancer forgets a backend at once: the
                # preStop pause is for proxies that take time to).
                remove(leaving)
                sent = time.monotonic()
                exited = asyncio.ensure_future(leaving.terminate(timeout=GRACE))
                await connections_gone(grpc_port(leaving))
                moved_off.append(time.monotonic() - sent)
                assert await exited == 0, leaving.log()
                drains.append(time.monotonic() - sent)
                assert "drained" in leaving.log()
            replaced.set()
            await asyncio.gather(*dispatching)
            job_ids = set(accepted)
            assert len(job_ids) == len(accepted)
            while not all(job_ids <= set(s.terminal) for s in subscribers):
                await asyncio.sleep(POLL)
            # A late duplicate, if one were to slip through, would land with the last events:
            # every subscriber is at the newest cursor, and nothing more comes.
            await asyncio.sleep(1.0)

        refused = sum((d.refused for d in dispatchers), collections.Counter[str]())
        retried = sum((d.refusals for d in dispatchers), collections.Counter[str]())
        print(
            f"\nrolling restart: dispatches={len(accepted)}, replicas replaced={len(new)}, "
            f"drains (SIGTERM to exit)={[f'{d:.2f} s' for d in drains]} (grace {GRACE:g} s), "
            f"gRPC connections gone after={[f'{d:.2f} s' for d in moved_off]}, "
            f"dispatch refusals={dict(refused)} (most for one dispatch: "
            f"{max(retried.values(), default=0)}), "
            f"subscriber resumes={[s.resumes for s in subscribers]}, "
            f"events per subscriber={[len(s.events) for s in subscribers]}, "
            f"gRPC connections by replica port={grpc_balancer.connections}"
        )
        assert set(refused) <= {"UNAVAILABLE"}
        cursors = [s.cursors for s in subscribers]
        for s, seen in zip(subscribers, cursors, strict=True):
            # No event repeated, none out of order, every job's end exactly once.
            assert seen == sorted(set(seen))
            assert set(s.terminal) == job_ids
            assert set(s.terminal.values()) == {1}
        # No event lost: every subscriber saw the same events (each from the start).
        assert cursors[0] == cursors[1] == cursors[2]
        # Every old replica let go of its connections and exited within its grace; the new
        # ones served the rest of the run.
        assert all(drain < GRACE for drain in drains)
        assert all(gone < GRACE for gone in moved_off)
        assert sum(grpc_balancer.connections.get(grpc_port(g), 0) for g in new) >= 1
    finally:
        await cancel(*dispatching, *following)
        for dispatcher in dispatchers:
            await dispatcher.close()
        for gateway in old + new:
            await gateway.close()
        await grpc_balancer.close()
        await webhooks.close()
