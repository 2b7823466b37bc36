"""B7: the outbox's background sync calls (jobs of services that do not call back, sent in sync
mode) against an upstream that answers in `sync_delay`..`sync_delay_max` seconds: whether the
gateway keeps sending at the account's rate while earlier calls are still waiting for their
answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core import states

from .messages import dispatch_request

STREAM_SETTLE = 0.5
"""Seconds between opening the subscription and the first dispatch: a live stream sees only
what comes after it is open."""


def background_sync(target: str, jobs: int, timeout: float) -> dict[str, Any]:
    return asyncio.run(_background_sync(target, jobs, timeout))


async def _background_sync(target: str, jobs: int, timeout: float) -> dict[str, Any]:
    """Subscribe, queue `jobs` async jobs at once, and wait until every one has ended (a stream
    does not carry upstream attempts: `attempts` reads them from the store afterwards)."""
    ended: dict[str, str] = {}
    ours: set[str] = set()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(live_only=True))

        async def follow() -> None:
            async for event in call:
                if event.type in (states.COMPLETED, states.FAILED):
                    ended[event.job_id] = event.type
                if len(ours) == jobs and ours <= ended.keys():
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(STREAM_SETTLE)
        queued_at = time.time()
        request = dispatch_request()
        answers = await asyncio.gather(*(stub.Dispatch(request, timeout=30) for _ in range(jobs)))
        ours.update(answer.job.job_id for answer in answers)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await follower
        follower.cancel()
        call.cancel()
    return {
        "queued_at": queued_at,
        "ended": {job: ended.get(job, "") for job in ours},
    }


def attempts(db: Path) -> dict[str, list[dict[str, float]]]:
    """Each job's upstream attempts as the gateway's SQLite store recorded them: when sent, and
    how long the answer took."""
    found: dict[str, list[dict[str, float]]] = {}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT job_id, data FROM events WHERE type = ?", (states.ATTEMPT,))
        for job_id, data in rows:
            attempt = json.loads(data)
            found.setdefault(job_id, []).append(
                {"time": float(attempt["time"]), "latency": float(attempt["latency"] or 0.0)}
            )
    return found


def peak_in_flight(calls: list[tuple[float, float]]) -> int:
    """The most calls awaiting their answers at once, from (sent, answered) pairs."""
    edges = sorted([(sent, 1) for sent, _ in calls] + [(answered, -1) for _, answered in calls])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def most_in_window(times: list[float], window: float) -> int:
    """The most of `times` (sorted) within any `window` seconds."""
    most = start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
