"""A gateway SIGKILLed right after answering sync calls comes back with each of their jobs ended
once, as answered, and each sent upstream once: the result is stored before the answer goes
out. The outbox entries the sync calls leave behind are dropped before the kill for some (by the
outbox's next lease: store/sqlite/store.py) and acked after the restart for the others, whose
jobs the outbox finds ended; either way none is sent again."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.process import gateway_env, gateway_process
from tests.support.requests import request_for

CALLS = 20
"""Sync calls in each round."""
SETTLE_TIMEOUT = 30.0
"""Seconds for the outbox to ack what it holds (it looks every second when idle)."""


async def _sync_calls(stub: pb_grpc.DispatchServiceStub) -> dict[str, pb.Job]:
    request = request_for(pb.SERVICE_EMAIL)
    request.mode = pb.MODE_SYNC
    answers = await asyncio.gather(*(stub.Dispatch(request, timeout=30) for _ in range(CALLS)))
    return {answer.job.job_id: answer.job for answer in answers}


def _rows(db: Path, query: str) -> list[Any]:
    """Read from the store's file beside the gateway (WAL: a reader does not stop its writer)."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(query).fetchall())
    finally:
        conn.close()


async def _outbox_emptied(db: Path) -> None:
    async with asyncio.timeout(SETTLE_TIMEOUT):
        while _rows(db, "SELECT count(*) FROM outbox") != [(0,)]:
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("sandbox_options", [{"sync_delay": 0.0}])
async def test_sync_answers_survive_a_sigkill_right_after_them(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    env = gateway_env(sandbox, tls, tmp_path)
    target, db = env["GATEWAY_GRPC_ADDR"], Path(env["GATEWAY_STORE"])
    gateway = gateway_process(env, tmp_path / "gateway.log")
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            answered = await _sync_calls(stub)
            # The first round's entries dropped before the kill, the second's killed with the
            # gateway, right after their answers.
            await _outbox_emptied(db)
            answered |= await _sync_calls(stub)
        await gateway.kill()
        await gateway.start()
        # The restarted outbox finds every entry's job ended, and acks it.
        await _outbox_emptied(db)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DispatchServiceStub(channel)
            stored = {j: await stub.GetJob(pb.GetJobRequest(job_id=j)) for j in answered}
        ends = dict(_rows(db, "SELECT job_id, count(*) FROM events WHERE terminal GROUP BY job_id"))

        # Each job ended once, as its answer said, and was sent upstream once.
        assert ends == dict.fromkeys(answered, 1)
        for job_id, job in answered.items():
            assert job.state == pb.JOB_STATE_SUCCEEDED
            assert stored[job_id].state == job.state
            assert stored[job_id].result == job.result
            assert stored[job_id].last_event == "dispatch_completed"
        keys = collections.Counter(d.idempotency_key for d in sandbox.sandbox.dispatches)
        assert keys == dict.fromkeys(answered, 1)
        assert sandbox.sandbox.stats().dispatch_requests == len(answered)
    finally:
        await gateway.close()
