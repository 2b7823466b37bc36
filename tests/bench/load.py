"""The load generator: functions that each run in a process of their own (see procs.run_workers),
never in the gateway's. Each returns a plain dict, with the generator's own CPU seconds where
they bound what it could measure (B6)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.rpc.convert import spec_from_request

from .messages import (
    WEBHOOK_EVENT,
    basic_authorization,
    callback_path,
    dispatch_request,
    signed_webhook,
)
from .rawhttp import RawConnection

READY_POLL = 0.02
STREAM_READY_TIMEOUT = 120.0
SUBSCRIBER_GRACE = 5.0
"""Seconds a latency subscriber waits for the last events after the sender has finished."""


def _cpu() -> float:
    return time.process_time()


# B1: async Dispatch at a fixed number of calls in flight


def dispatch_load(
    target: str, seconds: float, warmup: float, in_flight: int, connections: int = 1
) -> dict[str, Any]:
    return asyncio.run(_dispatch_load(target, seconds, warmup, in_flight, connections))


CONNECTION_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
"""Each channel its own connection: channels to one target otherwise share one (grpc's global
subchannel pool), which the kernel would hand to one worker of a gateway (SO_REUSEPORT spreads
connections, not calls)."""


async def _dispatch_load(
    target: str, seconds: float, warmup: float, in_flight: int, connections: int
) -> dict[str, Any]:
    """`in_flight` callers spread over `connections` channels."""
    request = dispatch_request()
    latencies: list[float] = []
    failures = 0
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for _ in range(connections):
            channel = grpc.aio.insecure_channel(target, options=CONNECTION_OPTIONS)
            await stack.enter_async_context(channel)
            stub = pb_grpc.DispatchServiceStub(channel)
            await stub.Dispatch(request, timeout=30)
            stubs.append(stub)
        started = time.perf_counter()
        measure_from, end = started + warmup, started + warmup + seconds
        cpu_at_start: list[float] = []

        async def caller(stub: pb_grpc.DispatchServiceStub) -> None:
            nonlocal failures
            while True:
                before = time.perf_counter()
                if before >= end:
                    return
                if before >= measure_from and not cpu_at_start:
                    cpu_at_start.append(_cpu())
                try:
                    await stub.Dispatch(request, timeout=30)
                except grpc.aio.AioRpcError:
                    failures += 1
                    continue
                after = time.perf_counter()
                if before >= measure_from and after <= end:
                    latencies.append(after - before)

        await asyncio.gather(*(caller(stubs[i % connections]) for i in range(in_flight)))
        cpu = _cpu() - (cpu_at_start[0] if cpu_at_start else _cpu())
    return {
        "count": len(latencies),
        "seconds": seconds,
        "latencies": latencies,
        "failures": failures,
        "cpu": cpu,
    }


# B2: webhooks as fast as they are accepted


def webhook_load(
    port: int, job_ids: list[str], seconds: float, warmup: float, connections: int
) -> dict[str, Any]:
    return asyncio.run(_webhook_load(port, job_ids, seconds, warmup, connections))


async def _webhook_load(
    port: int, job_ids: list[str], seconds: float, warmup: float, connections: int
) -> dict[str, Any]:
    paths = [callback_path(job_id) for job_id in job_ids]
    statuses: dict[int, int] = {}
    accepted = 0
    seq = 0
    started = time.perf_counter()
    measure_from, end = started + warmup, started + warmup + seconds
    cpu_at_start: list[float] = []

    async def sender() -> None:
        nonlocal accepted, seq
        conn = RawConnection("127.0.0.1", port)
        await conn.open()
        try:
            while (now := time.perf_counter()) < end:
                if now >= measure_from and not cpu_at_start:
                    cpu_at_start.append(_cpu())
                seq += 1
                body, headers = signed_webhook(seq)
                status = await conn.post(paths[seq % len(paths)], body, headers)
                if now >= measure_from and time.perf_counter() <= end:
                    statuses[status] = statuses.get(status, 0) + 1
                    accepted += status == 200
        finally:
            await conn.close()

    await asyncio.gather(*(sender() for _ in range(connections)))
    cpu = _cpu() - (cpu_at_start[0] if cpu_at_start else _cpu())
    return {"accepted": accepted, "seconds": seconds, "statuses": statuses, "cpu": cpu}


def count_events(target: str, stop: Any, timeout: float) -> dict[str, Any]:
    """Subscribe live and count events until `stop` (a multiprocessing Event) is set."""
    return asyncio.run(_count_events(target, stop, timeout))


async def _count_events(target: str, stop: Any, timeout: float) -> dict[str, Any]:
    """`webhooks`: the events of the benchmark's webhooks among those `received`; `ended`: the
    status the gateway ended the stream with before the stop (RESOURCE_EXHAUSTED for a stream cut
    off as too slow), or None."""
    received = webhooks = 0
    ended: str | None = None
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.DispatchServiceStub(channel).Subscribe(pb.SubscribeRequest(live_only=True))

        async def read() -> None:
            nonlocal received, webhooks, ended
            try:
                async for event in call:
                    received += 1
                    webhooks += event.type == WEBHOOK_EVENT
            except grpc.aio.AioRpcError as exc:
                if not stop.is_set():
                    ended = exc.code().name
                raise

        reader = asyncio.create_task(read())
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(READY_POLL)
        # Let the last events stored before the stop arrive.
        await asyncio.sleep(0.5)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader
    return {"received": received, "webhooks": webhooks, "ended": ended}


# B3: webhooks at a fixed rate, timed to a subscriber's stream


def paced_webhooks(
    port: int, job_ids: list[str], rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    return asyncio.run(_paced_webhooks(port, job_ids, rate, seconds, connections))


async def _paced_webhooks(
    port: int, job_ids: list[str], rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    paths = [callback_path(job_id) for job_id in job_ids]
    pool: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(connections):
        conn = RawConnection("127.0.0.1", port)
        await conn.open()
        pool.put_nowait(conn)
    statuses: dict[int, int] = {}
    lags: list[float] = []
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def send(seq: int) -> None:
        conn = await pool.get()
        try:
            lags.append(loop.time() - (start + seq / rate))
            body, headers = signed_webhook(seq)
            status = await conn.post(paths[seq % len(paths)], body, headers)
            statuses[status] = statuses.get(status, 0) + 1
        finally:
            pool.put_nowait(conn)

    tasks = []
    cpu_before = _cpu()
    for seq in range(total):
        delay = start + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(seq)))
    await asyncio.gather(*tasks)
    cpu = _cpu() - cpu_before
    while not pool.empty():
        await pool.get_nowait().close()
    lags.sort()
    return {
        "sent": total,
        "statuses": statuses,
        "cpu": cpu,
        "lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
    }


def latency_subscriber(target: str, total: int, skip: int, timeout: float) -> dict[str, Any]:
    """Time each event from its webhook's send; the first `skip` are the warm-up."""
    return asyncio.run(_latency_subscriber(target, total, skip, timeout))


async def _latency_subscriber(target: str, total: int, skip: int, timeout: float) -> dict[str, Any]:
    latencies: list[float] = []
    seen = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.DispatchServiceStub(channel).Subscribe(pb.SubscribeRequest(live_only=True))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for event in call:
                    arrived = time.monotonic()
                    if "sent" not in event.data:
                        continue
                    seen += 1
                    if float(event.data["seq"]) >= skip:  # type: ignore[arg-type]
                        latencies.append(arrived - float(event.data["sent"]))  # type: ignore[arg-type]
                    if seen >= total:
                        break
        call.cancel()
    return {"latencies": latencies, "expected": total - skip}


# B4: many streams, one event to all


def hold_streams(
    target: str,
    readyz_url: str,
    count: int,
    wave: int,
    channels: int,
    trigger: dict[str, Any],
    opened: Any,
    go: Any,
    timeout: float,
) -> dict[str, Any]:
    return asyncio.run(
        _hold_streams(target, readyz_url, count, wave, channels, trigger, opened, go, timeout)
    )


async def _wait_streams(http: httpx.AsyncClient, readyz_url: str, wanted: int) -> None:
    deadline = time.monotonic() + STREAM_READY_TIMEOUT
    while True:
        answer = await http.get(readyz_url)
        if int(answer.json()["streams"]) >= wanted:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {answer.json()['streams']} of {wanted} streams opened")
        await asyncio.sleep(READY_POLL)


async def _hold_streams(
    target: str,
    readyz_url: str,
    count: int,
    wave: int,
    channels: int,
    trigger: dict[str, Any],
    opened: Any,
    go: Any,
    timeout: float,
) -> dict[str, Any]:
    # Separate subchannels, so that the streams spread over several HTTP/2 connections.
    options = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs = [pb_grpc.DispatchServiceStub(c) for c in chans]
    arrivals: list[float] = []
    all_in = asyncio.Event()
    calls: list[Any] = []

    async def listen(call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await call.read()
            arrivals.append(time.monotonic())
            if len(arrivals) == count:
                all_in.set()

    readers = []
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient() as http:
        began = loop.time()
        # In waves: gRPC core cancels streams that wait unaccepted beyond its pending limit.
        for first in range(0, count, wave):
            for i in range(first, min(first + wave, count)):
                call = stubs[i % channels].Subscribe(pb.SubscribeRequest(live_only=True))
                calls.append(call)
                readers.append(asyncio.create_task(listen(call)))
            await _wait_streams(http, readyz_url, len(calls))
        open_seconds = loop.time() - began
        opened.set()
        while not go.is_set():
            await asyncio.sleep(READY_POLL)
        sent = time.monotonic()
        answer = await http.post(
            trigger["url"], content=trigger["body"], headers=trigger["headers"]
        )
        answer.raise_for_status()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout)
    for call in calls:
        call.cancel()
    await asyncio.gather(*readers)
    for chan in chans:
        await chan.close()
    return {
        "received": len(arrivals),
        "open_seconds": open_seconds,
        "broadcast_seconds": (max(arrivals) - sent) if arrivals else float("nan"),
    }


# B5: sync Dispatch through the gateway, and the same request straight to the sandbox


@dataclass(frozen=True)
class SyncTargets:
    """Where B5's calls go: the gateway's and the bare servers' gRPC addresses, the sandbox and
    its account, and `disk`, the gateway's store's folder (for the benchmark's own commits)."""

    gateway: str
    bare: str
    floor: str
    upstream: str
    email: str
    password: str
    disk: str


def sync_pairs(targets: SyncTargets, count: int) -> dict[str, Any]:
    return asyncio.run(_sync_pairs(targets, count))


SYNC_WARMUP = 5
"""Calls of each kind before B5 measures."""


class DurableCommits:
    """What a durable write costs on this disk, and no more: a one-row commit to a SQLite file in
    WAL mode with synchronous=FULL (the WAL's fsync), from the calling thread."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS t (v BLOB)")

    def commit(self) -> float:
        """Seconds one commit took."""
        before = time.perf_counter()
        self.conn.execute("INSERT INTO t (v) VALUES (?)", (b"x" * 200,))
        return time.perf_counter() - before


async def _sync_pairs(targets: SyncTargets, count: int) -> dict[str, Any]:
    """Sync dispatches through the gateway, the same request straight to the upstream, a
    Dispatch to the bare gRPC server (the gRPC hop's own cost), the two durable commits the
    gateway cannot do without (the job before the upstream call, its result after, on the
    gateway's disk), and the sync Dispatch of the floor server (the bare server doing those
    commits around the upstream call), interleaved one by one."""
    request = dispatch_request(sync=True)
    spec = spec_from_request(request)
    auth = basic_authorization(targets.email, targets.password)
    via_gateway: list[float] = []
    direct: list[float] = []
    hop: list[float] = []
    commits: list[float] = []
    floored: list[float] = []
    durable = DurableCommits(str(Path(targets.disk) / "floor.db"))
    async with (
        grpc.aio.insecure_channel(targets.gateway) as channel,
        grpc.aio.insecure_channel(targets.bare) as bare_channel,
        grpc.aio.insecure_channel(targets.floor) as floor_channel,
        httpx.AsyncClient(base_url=targets.upstream, headers={"Authorization": auth}) as http,
    ):
        stub = pb_grpc.DispatchServiceStub(channel)
        bare_stub = pb_grpc.DispatchServiceStub(bare_channel)
        floor_stub = pb_grpc.DispatchServiceStub(floor_channel)

        async def straight() -> None:
            headers = {"X-Request-ID": uuid.uuid4().hex, "X-Idempotency-Key": uuid.uuid4().hex}
            answer = await http.post(spec.path, json=dict(spec.body), headers=headers)
            answer.raise_for_status()

        # Warm both paths: connections, the sandbox's first request, the gateway's pools.
        for _ in range(SYNC_WARMUP):
            await stub.Dispatch(request, timeout=30)
            await straight()
            await bare_stub.Dispatch(request, timeout=30)
            await floor_stub.Dispatch(request, timeout=30)
        # Interleaved one by one, so that both see the same machine at the same moment.
        for _ in range(count):
            before = time.perf_counter()
            response = await stub.Dispatch(request, timeout=30)
            via_gateway.append(time.perf_counter() - before)
            assert response.job.state == pb.JOB_STATE_SUCCEEDED, response.job
            before = time.perf_counter()
            await straight()
            direct.append(time.perf_counter() - before)
            before = time.perf_counter()
            await bare_stub.Dispatch(request, timeout=30)
            hop.append(time.perf_counter() - before)
            commits.append(durable.commit() + durable.commit())
            before = time.perf_counter()
            await floor_stub.Dispatch(request, timeout=30)
            floored.append(time.perf_counter() - before)
    durable.conn.close()
    return {
        "gateway": via_gateway,
        "direct": direct,
        "grpc_hop": hop,
        "two_commits": commits,
        "floor_server": floored,
    }
