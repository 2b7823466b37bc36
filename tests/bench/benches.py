"""B1-B6 of issue 5, B8 of issue 15: each starts what it measures, gateway and baseline one
after the other in the same run, and returns its table rows and the latency samples the chart
draws."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core import states
from dispatcher_gateway.core.rate import RATE_MARGIN, RATE_MARGIN_MIN
from dispatcher_gateway.core.retry import RateLimit
from tests.support.nats_server import start_nats
from tests.support.process import ServerProcess

from . import background_sync, knee, load, procs
from .messages import (
    SANDBOX_EMAIL,
    SANDBOX_PASSWORD,
    callback_path,
    dispatch_request,
    signed_webhook,
)

WORKERS = 2
"""GATEWAY_WORKERS in B2 and B8 (the machine's cores, on the reference machine)."""
WORKER_TIMEOUT_MARGIN = 60.0
"""Seconds a worker may overrun its nominal duration (start-up, warm-up, draining)."""
HUB_SUBSCRIBERS = 1


@dataclass(frozen=True)
class Scale:
    name: str
    seconds: float
    """B1, B2: the measured window, after `warmup`."""
    warmup: float
    in_flight: int
    """B1: calls in flight."""
    connections: int
    """B2: keep-alive connections sending webhooks, each one request at a time."""
    jobs: int
    """Jobs the webhooks are spread over."""
    paced_rate: float
    reference_rate: float
    """B3 again, below the gateway's capacity on this machine: the path's own latency."""
    paced_seconds: float
    paced_warmup: float
    streams: int
    wave: int
    stream_channels: int
    sync_calls: int
    knee_rate: float = 2000.0
    """B3 past the knee: webhooks offered per second, over `knee_connections`."""
    knee_connections: int = 512
    knee_seconds: float = 5.0
    background_jobs: int = 200
    """B7: jobs queued at once for the outbox to send in sync mode, at the default rate."""
    background_rate: str = "100/min"
    sync_delay: float = 2.0
    sync_delay_max: float = 30.0


FULL = Scale(
    "full",
    seconds=10.0,
    warmup=2.0,
    in_flight=50,
    connections=32,
    jobs=200,
    paced_rate=500.0,
    reference_rate=200.0,
    paced_seconds=10.0,
    paced_warmup=1.0,
    streams=50_000,
    wave=500,
    stream_channels=4,
    sync_calls=400,
)
TINY = Scale(
    "tiny",
    seconds=0.4,
    warmup=0.1,
    in_flight=8,
    connections=4,
    jobs=4,
    paced_rate=100.0,
    reference_rate=50.0,
    paced_seconds=0.4,
    paced_warmup=0.1,
    streams=40,
    wave=20,
    stream_channels=2,
    sync_calls=10,
    knee_rate=200.0,
    knee_connections=16,
    knee_seconds=0.4,
    background_jobs=8,
    background_rate="4/s",
    sync_delay=0.05,
    sync_delay_max=0.5,
)


@dataclass
class Row:
    id: str
    what: str
    figure: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    rows: list[Row]
    samples: dict[str, list[float]] = field(default_factory=dict)
    """Latencies in milliseconds, by series name, for the chart."""


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "count": len(samples),
        "p50_ms": percentile(samples, 50),
        "p90_ms": percentile(samples, 90),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples) if samples else math.nan,
    }


def _timeout(scale: Scale, seconds: float) -> float:
    return seconds + WORKER_TIMEOUT_MARGIN


def create_jobs(target: str, count: int) -> list[str]:
    """Async jobs for webhooks to land on (the upstream is unreachable: they stay queued)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        request = dispatch_request()
        return [stub.Dispatch(request, timeout=30).job.job_id for _ in range(count)]


# B1


def b1_dispatch(scale: Scale, folder: Path) -> Outcome:
    """GATEWAY_WORKERS=2 against two bare servers sharing a port (as many processes: the fair
    baseline), the load from two generator processes of `B1_CONNECTIONS` connections each; one
    worker against one bare server beside it, from one generator on one connection, as a
    reference (and B6's generator ceiling)."""
    one, bare_one = _b1_run(scale, folder, 1), _b1_run(scale, folder, 1, bare=True)
    two, bare_two = _b1_run(scale, folder, WORKERS), _b1_run(scale, folder, WORKERS, bare=True)
    floor = _b1_run(scale, folder, WORKERS, bare=True, floor=True)
    rows = [
        _b1_row(scale, f"GATEWAY_WORKERS={WORKERS}", two, bare_two, f"{WORKERS} processes"),
        _b1_row(scale, "one worker", one, bare_one, "1 process", reference=True),
        _b1_row(
            scale,
            f"floor: {WORKERS} bare servers + a durable row per call",
            floor,
            bare_two,
            f"{WORKERS} processes",
            reference=True,
        ),
        _generator("B6", "gRPC", bare_one, _per_second(bare_one), one, _per_second(one)),
    ]
    return Outcome(
        rows,
        {
            f"B1 gateway, {WORKERS} workers": ms(two["latencies"]),
            f"B1 bare grpc.aio, {WORKERS} processes": ms(bare_two["latencies"]),
        },
    )


B1_CONNECTIONS = 8
"""Connections per generator process with workers: the kernel hashes each to a worker."""


def _b1_run(
    scale: Scale, folder: Path, processes: int, *, bare: bool = False, floor: bool = False
) -> dict[str, Any]:
    """Dispatch at `scale.in_flight` calls in flight, from one generator process per server
    process; the servers' CPU seconds over the run beside the calls. `floor`: the bare servers
    each write a durable row per call (bare.py)."""
    budget = _timeout(scale, scale.seconds + scale.warmup)
    connections = 1 if processes == 1 else B1_CONNECTIONS
    args = (scale.seconds, scale.warmup, max(1, scale.in_flight // processes), connections)
    with contextlib.ExitStack() as stack:
        if bare:
            servers, addrs = stack.enter_context(procs.bare_grpc(folder, processes, floor=floor))
        else:
            store = str(folder / f"b1-{processes}.db")
            server, addrs = stack.enter_context(
                procs.gateway(folder, store=store, workers=processes)
            )
            servers = [server]
        pids = [server.pid for server in servers]
        generators = procs.Workers()
        cpu = procs.cpu_seconds(pids)
        for _ in range(processes):
            generators.start(load.dispatch_load, addrs.grpc, *args)
        found = generators.results(budget)
        cpu = procs.cpu_seconds(pids) - cpu
    latencies = [value for one in found for value in one["latencies"]]
    return {
        "count": len(latencies),
        "seconds": scale.seconds,
        "latencies": latencies,
        "failures": sum(one["failures"] for one in found),
        "cpu": sum(one["cpu"] for one in found),
        "server_cpu": cpu,
        "calls_run": sum(one["count"] for one in found)
        * (scale.seconds + scale.warmup)
        / scale.seconds,
    }


def _per_second(found: dict[str, Any]) -> float:
    return float(found["count"] / found["seconds"])


def _b1_row(
    scale: Scale,
    how: str,
    ours: dict[str, Any],
    bare: dict[str, Any],
    baseline: str,
    *,
    reference: bool = False,
) -> Row:
    rate, bare_rate = _per_second(ours), _per_second(bare)
    ours_ms, bare_ms = ms(ours["latencies"]), ms(bare["latencies"])
    ratio = rate / bare_rate if bare_rate else None

    def cpu_ms(found: dict[str, Any]) -> float:
        return 1000 * found["server_cpu"] / found["calls_run"] if found["calls_run"] else math.nan

    return Row(
        "B1",
        f"async Dispatch acked/s at {scale.in_flight} in flight, SQLite, {how} "
        "(p50/p99 ms; server CPU ms per call)",
        f"{rate:,.0f}/s ({percentile(ours_ms, 50):.1f}/{percentile(ours_ms, 99):.1f}; "
        f"{cpu_ms(ours):.2f})",
        f"{bare_rate:,.0f}/s ({percentile(bare_ms, 50):.1f}/{percentile(bare_ms, 99):.1f}; "
        f"{cpu_ms(bare):.2f}; {baseline})",
        ratio,
        "(reference)" if reference else ">= 0.75",
        None if reference else ratio is not None and ratio >= 0.75,
        {
            "gateway": {
                "per_second": rate,
                "failures": ours["failures"],
                "server_cpu_ms_per_call": cpu_ms(ours),
                **_summary(ours_ms),
            },
            "baseline": {
                "per_second": bare_rate,
                "failures": bare["failures"],
                "server_cpu_ms_per_call": cpu_ms(bare),
                **_summary(bare_ms),
            },
            "generator_cpu_seconds": {"gateway": ours["cpu"], "baseline": bare["cpu"]},
            "measured_seconds": scale.seconds,
        },
    )


def _generator(
    row_id: str,
    kind: str,
    bare: dict[str, Any],
    bare_rate: float,
    ours: dict[str, Any],
    rate: float,
) -> Row:
    """B6: what one core of the generator can issue; a figure near it measured the generator."""
    done = bare.get("count", bare.get("accepted", 0))
    ceiling = done / bare["cpu"] if bare["cpu"] > 0 else math.inf
    busy = bare["cpu"] / bare["seconds"]
    return Row(
        row_id,
        f"{kind} load generator ceiling (calls per CPU-second of its process)",
        f"{ceiling:,.0f}/s",
        "-",
        bare_rate / ceiling if ceiling else None,
        "printed",
        None,
        {
            "ceiling_per_second": ceiling,
            "generator_busy_during_baseline": busy,
            "generator_busy_during_gateway": ours["cpu"] / ours["seconds"],
            "note": "ratio = the baseline's rate / this ceiling; near 1 the baseline was "
            "limited by the generator, so the gateway's ratio is an upper bound",
            "gateway_rate": rate,
        },
    )


# B2, and B8's webhook rows: the same webhook load on one worker, two, and the bare baselines


def b2_webhooks(scale: Scale, folder: Path) -> Outcome:
    one, two = _webhooks(scale, folder, 1), _webhooks(scale, folder, WORKERS)
    bare_one, bare_two = _bare_webhooks(scale, folder, 1), _bare_webhooks(scale, folder, WORKERS)
    floor = _bare_webhooks(scale, folder, WORKERS, floor=True)
    rows = [
        _b2_row(scale, f"GATEWAY_WORKERS={WORKERS}", two, bare_two, f"{WORKERS} processes"),
        _b2_row(scale, "one worker", one, bare_one, "1 process", reference=True),
        _b2_row(
            scale,
            f"floor: {WORKERS} bare servers + a durable row and a stream message per webhook",
            floor,
            bare_two,
            f"{WORKERS} processes",
            reference=True,
        ),
        _generator("B6", "HTTP", bare_one, _rate(bare_one), one, _rate(one)),
    ]
    return Outcome(rows)


def _b2_row(
    scale: Scale,
    how: str,
    ours: dict[str, Any],
    bare: dict[str, Any],
    bare_how: str,
    *,
    reference: bool = False,
) -> Row:
    rate, bare_rate = _rate(ours), _rate(bare)
    ratio = rate / bare_rate if bare_rate else None
    fanned = ours["fanned_out"]
    # Every webhook taken, warm-up included (as `fanned` counts), or as many as the rate says.
    taken = (
        sum(ours.get("per_worker", {}).values())
        or ours["accepted"] * (scale.seconds + scale.warmup) / scale.seconds
    )
    return Row(
        "B2",
        f"webhooks accepted/s (verified, stored, fanned out), SQLite, {how} "
        "(per CPU-second; share of them that reached the subscriber)",
        f"{rate:,.0f}/s ({ours['per_cpu']:,.0f}; {min(1.0, fanned / taken if taken else 0):.0%})",
        f"{bare_rate:,.0f}/s ({bare['per_cpu']:,.0f}; {bare_how})",
        ratio,
        "(reference)" if reference else ">= 0.4",
        None if reference else ratio is not None and ratio >= 0.4 and fanned >= ours["accepted"],
        {
            "gateway": {
                "per_second": rate,
                "statuses": ours["statuses"],
                "fanned_out": fanned,
                "per_worker": ours.get("per_worker", {}),
            },
            "baseline": {
                "per_second": bare_rate,
                "statuses": bare["statuses"],
                "per_cpu_second": bare["per_cpu"],
            },
            "gateway_per_cpu_second": ours["per_cpu"],
            "per_cpu_ratio": ours["per_cpu"] / bare["per_cpu"] if bare["per_cpu"] else None,
            "generator_cpu_seconds": {"gateway": ours["cpu"], "baseline": bare["cpu"]},
            "connections": scale.connections,
        },
    )


def _rate(found: dict[str, Any]) -> float:
    return float(found["accepted"] / found["seconds"])


_RUNS: dict[tuple[Any, ...], dict[str, Any]] = {}
"""Runs B2 and B8 share, made once per benchmark run."""


def _webhooks(
    scale: Scale, folder: Path, workers: int, sharing: str | None = None
) -> dict[str, Any]:
    """Webhooks as fast as the gateway takes them, one subscriber counting what is fanned out;
    with the share of each worker."""
    key = ("gateway", scale, folder, workers, sharing)
    if key in _RUNS:
        return _RUNS[key]
    args = (scale.seconds, scale.warmup, scale.connections)
    budget = _timeout(scale, scale.seconds + scale.warmup)
    store = str(folder / f"b2-{workers}-{sharing or 'default'}.db")
    with procs.gateway(folder, store=store, workers=workers, sharing=sharing) as (server, addrs):
        jobs = create_jobs(addrs.grpc, scale.jobs)
        stop = procs.SPAWN.Event()
        subscriber = procs.Workers()
        subscriber.start(load.count_events, addrs.grpc, stop, budget)
        try:
            procs.wait_streams(addrs.readyz, HUB_SUBSCRIBERS)
            cpu = procs.cpu_seconds([server.pid])
            ours = procs.run(load.webhook_load, addrs.webhook_port, jobs, *args, timeout=budget)
            cpu = procs.cpu_seconds([server.pid]) - cpu
        finally:
            stop.set()
        counted = subscriber.results(budget)[0]
        per_worker = procs.webhooks_by_worker(addrs.admin_port)
    per_cpu = sum(per_worker.values()) / cpu if cpu else math.nan
    _RUNS[key] = {
        **ours,
        "fanned_out": counted["received"],
        "stream_ended": counted["ended"],
        "per_worker": per_worker,
        "per_cpu": per_cpu,
    }
    return _RUNS[key]


def _bare_webhooks(
    scale: Scale, folder: Path, processes: int, *, floor: bool = False
) -> dict[str, Any]:
    """`floor`: each bare server writes a row per webhook and sends it to the stream that a
    subscriber of its own holds (bare.py); the rows that reached them are `fanned_out`."""
    key = ("bare", scale, folder, processes, floor)
    if key not in _RUNS:
        args = (scale.seconds, scale.warmup, scale.connections)
        budget = _timeout(scale, scale.seconds + scale.warmup)
        with procs.bare_webhook(folder, processes, floor=floor) as (port, pids, streams):
            jobs = [f"job_{i:032x}" for i in range(scale.jobs)]
            stop = procs.SPAWN.Event()
            subscribers = procs.Workers()
            try:
                for target in streams:
                    subscribers.start(load.count_events, target, stop, budget)
                if streams:
                    procs.wait_each_streams(f"http://{procs.HOST}:{port}/readyz", pids)
                cpu = procs.cpu_seconds(pids)
                found = procs.run(load.webhook_load, port, jobs, *args, timeout=budget)
                cpu = procs.cpu_seconds(pids) - cpu
            except BaseException:
                stop.set()
                subscribers.close()
                raise
            stop.set()
            fanned = sum(one["received"] for one in subscribers.results(budget))
        # Every status counted, warm-up too, as the gateway's per_worker counts are.
        sent = found["accepted"] * (scale.seconds + scale.warmup) / scale.seconds
        _RUNS[key] = {**found, "per_cpu": sent / cpu if cpu else math.nan, "fanned_out": fanned}
    return _RUNS[key]


# B3


def b3_latency(scale: Scale, folder: Path) -> Outcome:
    rows, samples = [], {}
    nats = start_nats(folder / "nats")
    try:
        for name, store, target in (
            ("SQLite", str(folder / "b3"), 5.0),
            ("NATS", nats.url, 10.0),
        ):
            for rate in (scale.paced_rate, scale.reference_rate):
                reference = rate != scale.paced_rate
                where = f"{store}-{rate:g}.db" if name == "SQLite" else store
                found = _paced(scale, folder, where, rate)
                latencies = ms(found["latencies"])
                p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                complete = len(latencies) == found["expected"]
                rows.append(
                    Row(
                        "B3",
                        f"webhook -> subscriber's stream at {rate:g}/s, {name} (p50/p99)",
                        f"{p50:.1f}/{p99:.1f} ms",
                        "-",
                        None,
                        "(reference)" if reference else f"p99 <= {target:g} ms",
                        None if reference else p99 <= target and complete,
                        {
                            **_summary(latencies),
                            "rate": rate,
                            "expected": found["expected"],
                            "statuses": found["statuses"],
                            "sender_lag_p99_ms": found["lag_p99"] * 1000,
                            "sender_cpu_seconds": found["cpu"],
                        },
                    )
                )
                if not reference:
                    samples[f"B3 {name}"] = latencies
        rows.append(_past_the_knee(scale, folder, nats.url))
    finally:
        nats.stop()
    return Outcome(rows, samples)


KNEE_TARGET_MS = 1000.0


def _past_the_knee(scale: Scale, folder: Path, store: str) -> Row:
    """B3 on NATS, offered more than one replica records: every answer, accepted or refused
    (503 with Retry-After), comes within KNEE_TARGET_MS of the webhook's turn to be sent."""
    budget = _timeout(scale, scale.knee_seconds)
    with procs.gateway(folder, store=store) as (_, addrs):
        jobs = create_jobs(addrs.grpc, scale.jobs)
        found = procs.run(
            knee.offered_webhooks,
            addrs.webhook_port,
            jobs,
            scale.knee_rate,
            scale.knee_seconds,
            scale.knee_connections,
            timeout=budget,
        )
    answers: dict[int, list[float]] = {int(k): ms(v) for k, v in found["answers"].items()}
    every = [t for times in answers.values() for t in times]
    accepted, refused = answers.get(200, []), answers.get(503, [])
    p99 = percentile(every, 99)
    others = {status: len(times) for status, times in answers.items() if status not in (200, 503)}
    return Row(
        "B3",
        f"webhooks offered at {scale.knee_rate:g}/s on {scale.knee_connections} connections, "
        "NATS: accepted/s, refused 503, answer p99",
        f"{len(accepted) / found['seconds']:,.0f}/s, {len(refused) / found['sent']:.0%}, "
        f"{p99:.0f} ms",
        "-",
        None,
        f"p99 <= {KNEE_TARGET_MS:g} ms",
        p99 <= KNEE_TARGET_MS and not others and not found["refusals_without_retry_after"],
        {
            "sent": found["sent"],
            "seconds": found["seconds"],
            "accepted": _summary(accepted),
            "refused": _summary(refused),
            "other_statuses": others,
            "refusals_without_retry_after": found["refusals_without_retry_after"],
            "written_late": _summary(ms(found["late"])),
        },
    )


def _paced(
    scale: Scale, folder: Path, store: str, rate: float, *, workers: int = 1
) -> dict[str, Any]:
    total_seconds = scale.paced_seconds + scale.paced_warmup
    skip = int(rate * scale.paced_warmup)
    total = int(rate * total_seconds)
    budget = _timeout(scale, total_seconds)
    with procs.gateway(folder, store=store, workers=workers) as (_, addrs):
        jobs = create_jobs(addrs.grpc, scale.jobs)
        subscriber = procs.Workers()
        subscriber.start(load.latency_subscriber, addrs.grpc, total, skip, budget)
        procs.wait_streams(addrs.readyz, HUB_SUBSCRIBERS)
        sender = procs.run(
            load.paced_webhooks,
            addrs.webhook_port,
            jobs,
            rate,
            total_seconds,
            scale.connections,
            timeout=budget,
        )
        found = subscriber.results(budget)[0]
    return {**sender, **found}


# B4


def b4_streams(scale: Scale, folder: Path) -> Outcome:
    with procs.gateway(folder, store=str(folder / "b4.db")) as (server, addrs):
        job = create_jobs(addrs.grpc, 1)[0]
        body, headers = signed_webhook(0)
        trigger = {"url": addrs.webhook_url + callback_path(job), "body": body, "headers": headers}
        ours = _hold(scale, server, addrs, trigger)
    with procs.bare_grpc(folder) as ([server], addrs):
        trigger = {
            "url": f"http://127.0.0.1:{addrs.admin_port}/broadcast",
            "body": b"",
            "headers": {},
        }
        bare = _hold(scale, server, addrs, trigger)
    mem_ratio = ours["rss_mb"] / bare["rss_mb"]
    time_ratio = ours["broadcast_seconds"] / bare["broadcast_seconds"]
    complete = ours["received"] == bare["received"] == scale.streams
    details = {"gateway": ours, "baseline": bare, "streams": scale.streams}
    return Outcome(
        [
            Row(
                "B4",
                f"{scale.streams:,} Subscribe streams: resident memory (idle before)",
                f"{ours['rss_mb']:.0f} MB ({ours['idle_rss_mb']:.0f})",
                f"{bare['rss_mb']:.0f} MB ({bare['idle_rss_mb']:.0f})",
                mem_ratio,
                "<= 1.5",
                mem_ratio <= 1.5,
                details,
            ),
            Row(
                "B4",
                f"{scale.streams:,} Subscribe streams: one event reaches all",
                f"{ours['broadcast_seconds']:.2f} s",
                f"{bare['broadcast_seconds']:.2f} s",
                time_ratio,
                "<= 1.5",
                time_ratio <= 1.5 and complete,
                {"received": {"gateway": ours["received"], "baseline": bare["received"]}},
            ),
        ]
    )


OPEN_SECONDS_PER_STREAM = 0.012
"""B4: the most a stream may take to open, the gateway's and the baseline's alike (20,000 opened
in 61 s and 18 s on the shared 2-core machine)."""


def _hold(
    scale: Scale, server: ServerProcess, addrs: procs.GatewayAddrs, trigger: dict[str, Any]
) -> dict[str, Any]:
    idle = server.rss_mb()
    opened, go = procs.SPAWN.Event(), procs.SPAWN.Event()
    budget = _timeout(scale, OPEN_SECONDS_PER_STREAM * scale.streams)
    holder = procs.Workers()
    holder.start(
        load.hold_streams,
        addrs.grpc,
        addrs.readyz,
        scale.streams,
        scale.wave,
        scale.stream_channels,
        trigger,
        opened,
        go,
        budget,
    )
    try:
        if not holder.wait(opened, budget):
            raise TimeoutError(f"{scale.streams} streams did not open: {server.log()}")
        rss = server.rss_mb()
    finally:
        go.set()
    result: dict[str, Any] = holder.results(budget)[0]
    return {**result, "rss_mb": rss, "idle_rss_mb": idle}


# B5


def b5_sync(scale: Scale, folder: Path) -> Outcome:
    with (
        procs.sandbox(folder) as upstream,
        procs.gateway(
            folder, store=str(folder / "b5.db"), upstream=upstream, rate="100000/min"
        ) as (_, addrs),
        procs.bare_grpc(folder) as (_, bare),
        procs.bare_grpc(folder, floor=True, upstream=upstream) as (_, floor_server),
    ):
        targets = load.SyncTargets(
            gateway=addrs.grpc,
            bare=bare.grpc,
            floor=floor_server.grpc,
            upstream=upstream,
            email=SANDBOX_EMAIL,
            password=SANDBOX_PASSWORD,
            disk=str(folder),
        )
        found = procs.run(
            load.sync_pairs,
            targets,
            scale.sync_calls,
            timeout=_timeout(scale, scale.sync_calls * 0.2),
        )
    ours, direct, hop = ms(found["gateway"]), ms(found["direct"]), ms(found["grpc_hop"])
    p50, direct_p50, hop_p50 = percentile(ours, 50), percentile(direct, 50), percentile(hop, 50)
    added = p50 - direct_p50
    # The floor of what the gateway adds: the gRPC hop, and the job before the upstream call and
    # its result after it each flushed to disk (core/dispatch.py says why neither flush can go),
    # measured in the same loop as the calls.
    commits = ms(found["two_commits"])
    floors = [h + c for h, c in zip(hop, commits, strict=True)]
    floor = percentile(floors, 50)
    served = ms(found["floor_server"])
    served_p50 = percentile(served, 50)
    return Outcome(
        [
            Row(
                "B5",
                "sync Dispatch via the sandbox, no delay: p50 (added, floor)",
                f"{p50:.2f} ms (+{added:.2f}, floor {floor:.2f})",
                f"{direct_p50:.2f} ms (httpx)",
                p50 / direct_p50 if direct_p50 else None,
                "added <= 1 ms or floor",
                added <= max(1.0, floor),
                {
                    "gateway": _summary(ours),
                    "direct": _summary(direct),
                    "added_p50_ms": added,
                    "floor_p50_ms": floor,
                },
            ),
            Row(
                "B5",
                "sync: the gRPC hop alone (Dispatch to the bare grpc.aio server), p50",
                f"{hop_p50:.2f} ms",
                "-",
                None,
                "(reference)",
                None,
                _summary(hop),
            ),
            Row(
                "B5",
                "sync floor: the gRPC hop + 2 durable SQLite commits (WAL, FULL), p50",
                f"{floor:.2f} ms",
                f"2 commits {percentile(commits, 50):.2f} ms",
                None,
                "(reference)",
                None,
                {"floor": _summary(floors), "two_commits": _summary(commits)},
            ),
            Row(
                "B5",
                "sync floor server: bare grpc.aio, a durable row, the upstream call (httpx), a "
                "durable row: p50 (added)",
                f"{served_p50:.2f} ms (+{served_p50 - direct_p50:.2f})",
                f"{direct_p50:.2f} ms (httpx)",
                served_p50 / direct_p50 if direct_p50 else None,
                "(reference)",
                None,
                {"floor_server": _summary(served), "added_p50_ms": served_p50 - direct_p50},
            ),
        ],
        {"B5 gateway": ours, "B5 httpx direct": direct},
    )


# B7


B7_TARGET = 0.95


def b7_background_sync(scale: Scale, folder: Path) -> Outcome:
    """`background_jobs` async email jobs (the sandbox never calls them back) queued at once: the
    outbox sends them in sync mode at the account's rate, each answered in `sync_delay` to
    `sync_delay_max` seconds. Held, the rate sends them in ceil(jobs / limit) windows: the last
    batch leaves (batches - 1) windows after the first (the gateway's window: the account's,
    widened by core.rate's margin). `slot_lag`: how long after its slot freed each send of a later
    window left."""
    limit = RateLimit.parse(scale.background_rate)
    batches = math.ceil(scale.background_jobs / limit.limit)
    # The gateway's own window: the account's, widened against arrival-time jitter.
    window = limit.window + max(RATE_MARGIN_MIN, limit.window * RATE_MARGIN)
    ideal = (batches - 1) * window
    budget = _timeout(scale, ideal + scale.sync_delay_max * 2)
    delays = (
        "--sync-delay",
        f"{scale.sync_delay:g}",
        "--sync-delay-max",
        f"{scale.sync_delay_max:g}",
    )
    with (
        procs.sandbox(folder, *delays) as upstream,
        procs.gateway(
            folder, store=str(folder / "b7.db"), upstream=upstream, rate=scale.background_rate
        ) as (_, addrs),
    ):
        found = procs.run(
            background_sync.background_sync,
            addrs.grpc,
            scale.background_jobs,
            budget,
            timeout=budget + WORKER_TIMEOUT_MARGIN,
        )
    recorded = background_sync.attempts(folder / "b7.db")
    tried = [recorded.get(job, []) for job in found["ended"]]
    attempts = [a for tries in tried for a in tries]
    sent = sorted(a["time"] for a in attempts)
    firsts = sorted(min(a["time"] for a in tries) for tries in tried if tries)
    span = firsts[-1] - firsts[0] if firsts else math.nan
    ratio = ideal / span if span > 0 else (1.0 if ideal == 0 and firsts else None)
    ended = list(found["ended"].values())
    completed = ended.count(states.COMPLETED)
    peak = background_sync.peak_in_flight([(a["time"], a["time"] + a["latency"]) for a in attempts])
    most = background_sync.most_in_window(sent, limit.window)
    waits = [f - found["queued_at"] for f in firsts]
    lags = [
        firsts[k] - max(firsts[k - 1], firsts[k - limit.limit] + window)
        for k in range(limit.limit, len(firsts))
    ]
    met = (
        ratio is not None
        and ratio >= B7_TARGET
        and completed == scale.background_jobs
        and most <= limit.limit
    )
    return Outcome(
        [
            Row(
                "B7",
                f"background sync calls at {scale.background_rate}, answers in "
                f"{scale.sync_delay:g}-{scale.sync_delay_max:g} s: {scale.background_jobs} "
                "jobs' sends span (peak in flight, completed)",
                f"{span:.1f} s ({peak}, {completed}/{scale.background_jobs})",
                f"{ideal:.1f} s",
                ratio,
                f">= {B7_TARGET:g}, all completed",
                met,
                {
                    "sends": len(sent),
                    "retries": len(sent) - len(firsts),
                    "most_sent_in_one_window": most,
                    "limit": limit.limit,
                    "window_seconds": limit.window,
                    "peak_in_flight": peak,
                    "ended": {kind: ended.count(kind) for kind in set(ended)},
                    "wait_to_send": _summary(ms(waits)),
                    "slot_lag": _summary(ms(lags)),
                    "gateway_window_seconds": window,
                },
            )
        ]
    )


# B8


def b8_workers(scale: Scale, folder: Path) -> Outcome:
    """GATEWAY_WORKERS=2 against one worker: webhooks/s (both ways of sharing the listener), and
    B3's latency on SQLite at its paced rate."""
    one, two = _webhooks(scale, folder, 1), _webhooks(scale, folder, WORKERS)
    shared = _webhooks(scale, folder, WORKERS, sharing="shared")
    rows = [
        _b8_rate(f"SO_REUSEPORT (the default), {scale.connections} connections", two, one),
        _b8_rate("the listener inherited from the parent (shared socket)", shared, one),
    ]
    samples = {}
    latencies = {}
    for workers in (1, WORKERS):
        store = str(folder / f"b8-{workers}.db")
        found = _paced(scale, folder, store, scale.paced_rate, workers=workers)
        latencies[workers] = ms(found["latencies"])
        samples[f"B8 {workers} worker(s)"] = latencies[workers]
        latencies[-workers] = [float(len(found["latencies"]) == found["expected"])]
    p50, p99 = percentile(latencies[WORKERS], 50), percentile(latencies[WORKERS], 99)
    p50_one, p99_one = percentile(latencies[1], 50), percentile(latencies[1], 99)
    complete = latencies[-WORKERS] == [1.0]
    rows.append(
        Row(
            "B8",
            f"webhook -> stream at {scale.paced_rate:g}/s, SQLite, {WORKERS} workers (p50/p99)",
            f"{p50:.1f}/{p99:.1f} ms",
            f"{p50_one:.1f}/{p99_one:.1f} ms (1 worker)",
            p99 / p99_one if p99_one else None,
            "p99 <= 5 ms",
            p99 <= 5.0 and complete,
            {
                str(WORKERS): _summary(latencies[WORKERS]),
                "1": _summary(latencies[1]),
                "complete": {"1": latencies[-1] == [1.0], str(WORKERS): complete},
            },
        )
    )
    return Outcome(rows, samples)


def _b8_rate(how: str, ours: dict[str, Any], one: dict[str, Any]) -> Row:
    rate, rate_one = _rate(ours), _rate(one)
    ratio = rate / rate_one if rate_one else None
    split = ours["per_worker"]
    total = sum(split.values()) or 1
    shares = "/".join(f"{100 * n / total:.0f}" for _, n in sorted(split.items()))
    return Row(
        "B8",
        f"webhooks accepted/s, {WORKERS} workers against 1: {how} (% per worker; per CPU-s)",
        f"{rate:,.0f}/s ({shares}; {ours['per_cpu']:,.0f})",
        f"{rate_one:,.0f}/s (1 worker; {one['per_cpu']:,.0f})",
        ratio,
        "> 1",
        ratio is not None and ratio > 1 and ours["fanned_out"] >= ours["accepted"],
        {
            "per_second": rate,
            "one_worker_per_second": rate_one,
            "per_worker": split,
            "per_cpu_second": ours["per_cpu"],
            "one_worker_per_cpu_second": one["per_cpu"],
            "statuses": ours["statuses"],
            "fanned_out": ours["fanned_out"],
        },
    )


BENCHES: dict[str, Callable[[Scale, Path], Outcome]] = {
    "B1": b1_dispatch,
    "B2": b2_webhooks,
    "B3": b3_latency,
    "B4": b4_streams,
    "B5": b5_sync,
    "B7": b7_background_sync,
    "B8": b8_workers,
}
