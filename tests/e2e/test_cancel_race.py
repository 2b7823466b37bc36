"""Cancels racing the outbox, at the moment of submission: 500 jobs, each canceled while an
outbox worker begins its submission (the cancel fired when the worker reaches
Store.begin_submission, each side a few random milliseconds later). On SQLite (its one replica:
the worker and the cancels on one file) and on NATS JetStream (three replicas' outbox workers,
each job's cancel through the next replica). Every job ends exactly once: canceled and never
seen upstream, or sent upstream once and its cancel refused."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core.errors import WrongState
from dispatcher_gateway.core.gateway import Gateway
from dispatcher_gateway.core.model import DispatchSpec, Job, JobEvent, JobState, Mode, Service
from dispatcher_gateway.core.ports import Store
from dispatcher_gateway.store import SqliteStore
from dispatcher_gateway.store.nats import NatsStore
from tests.support.core import build_core, running_outbox
from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsEndpoint, NatsFactory
from tests.support.process import gateway_env, gateway_process
from tests.support.requests import email_request
from tests.support.upstream import ScriptedUpstream

JOBS = 500
CANCEL_JITTER = 0.003
"""Seconds: how late, at most, a cancel is fired after the moment of submission."""
BEGIN_JITTER = 0.012
"""Seconds: how late, at most, the worker goes on. Longer than the cancel's: a cancel reads the
job, then appends (two trips to the store), where the worker's begin is one; so both win often."""
RUN_TIMEOUT = 180.0
CALL_TIMEOUT = 10.0
ENDED = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_CANCELED)
CLIENT = "billing"
SPEC = DispatchSpec((Service.EMAIL,), Mode.ASYNC, {"template": {"id": 1}})


class AtSubmission:
    """A replica's store that tells `moment` when its outbox is about to begin a job's
    submission, then goes on a random moment later."""

    def __init__(self, inner: Store, moment: Callable[[str], None]) -> None:
        self.inner = inner
        self.moment = moment
        self.refused_in_store = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_event(self, event: JobEvent, **options: Any) -> JobEvent | None:
        try:
            return await self.inner.append_event(event, **options)
        except WrongState:
            # The cancel read the job unbegun, and its fold found it begun: the closest races.
            self.refused_in_store += 1
            raise

    async def begin_submission(self, job_id: str) -> Job:
        self.moment(job_id)
        await asyncio.sleep(random.uniform(0, BEGIN_JITTER))
        return await self.inner.begin_submission(job_id)


class Race:
    def __init__(self) -> None:
        self.replicas: list[Gateway] = []
        self.stores: list[AtSubmission] = []
        self.cancels: dict[str, asyncio.Task[str]] = {}
        self.upstream = ScriptedUpstream()

    def moment(self, replica: int) -> Callable[[str], None]:
        def fire(job_id: str) -> None:
            if job_id not in self.cancels:
                other = self.replicas[(replica + 1) % len(self.replicas)]
                self.cancels[job_id] = asyncio.create_task(self._cancel(other, job_id))

        return fire

    async def _cancel(self, replica: Gateway, job_id: str) -> str:
        await asyncio.sleep(random.uniform(0, CANCEL_JITTER))
        try:
            await replica.control.cancel(CLIENT, job_id)
        except WrongState as exc:
            return "refused: " + str(exc).split(": ", 1)[0].split(" ", 2)[2]
        return "canceled"


@contextlib.asynccontextmanager
async def replicas(stores: list[Store]) -> AsyncIterator[Race]:
    race = Race()
    for index, store in enumerate(stores):
        await store.open()
        timed = AtSubmission(store, race.moment(index))
        race.stores.append(timed)
        race.replicas.append(build_core(timed, race.upstream))
    try:
        yield race
    finally:
        for store in stores:
            await store.close()


def sqlite_stores(tmp_path: Path) -> list[Store]:
    return [SqliteStore(tmp_path / "gateway.db")]


def nats_stores(server: NatsEndpoint) -> list[Store]:
    prefix = f"race{uuid.uuid4().hex[:8]}"
    return [NatsStore(server.servers, prefix=prefix) for _ in range(3)]


async def until_all(ended: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(RUN_TIMEOUT):
        while not await ended():
            await asyncio.sleep(0.2)


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("backend", ["sqlite", "nats"])
async def test_500_cancels_at_the_moment_of_submission_end_each_job_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        stores = sqlite_stores(tmp_path)
    else:
        stores = nats_stores(request.getfixturevalue("nats_server"))
    async with replicas(stores) as race:
        first = race.replicas[0]
        jobs = [
            (await first.dispatches.submit(CLIENT, SPEC, budget=None)).job_id for _ in range(JOBS)
        ]
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as workers:
            for replica in race.replicas:
                await workers.enter_async_context(running_outbox(replica))

            async def ended() -> bool:
                found = await asyncio.gather(*(stores[0].get_job(j) for j in jobs))
                return all(job is not None and job.state.terminal for job in found)

            await until_all(ended)
        elapsed = time.monotonic() - started
        outcomes = {job_id: await task for job_id, task in race.cancels.items()}

        sent = collections.Counter(race.upstream.keys)
        split: collections.Counter[str] = collections.Counter()
        for job_id in jobs:
            job = await stores[0].get_job(job_id)
            assert job is not None
            events = await stores[0].read_events(client=CLIENT, job_id=job_id)
            assert [e.type for e in events if e.terminal] == [job.last_event], job_id
            outcome = outcomes[job_id]
            split[outcome] += 1
            if job.state is JobState.CANCELED:
                assert outcome == "canceled", job_id
                assert sent[job_id] == 0, job_id
                assert job.submit_begun_at == 0
            else:
                assert job.state is JobState.SUCCEEDED, job_id
                assert outcome.startswith("refused"), job_id
                assert sent[job_id] == 1, job_id
        refusals = ", ".join(f"{k}: {v}" for k, v in sorted(split.items()) if k != "canceled")
        print(
            f"\ncancel race on {backend} ({len(stores)} replica(s), {JOBS} jobs, {elapsed:.1f} s): "
            f"canceled and never sent {split['canceled']}, sent once and the cancel refused "
            f"{JOBS - split['canceled']} ({refusals}; refused inside the store's atomic step, "
            f"the job read unbegun just before: {sum(s.refused_in_store for s in race.stores)})"
        )
        assert sum(sent.values()) == JOBS - split["canceled"]


# The same race between gateway processes: three replicas on one NATS server, the sandbox as the
# upstream, each of its answers 0.2-0.6 s late. A process's moment of submission cannot be seen
# from outside, so each job's cancel is fired at a random moment of the time the queue takes to
# drain, through a random replica: some land before the job's submission begins, some while its
# request is under way, some after its end.

REPLICAS = 3
PROCESS_RATE, PROCESS_WINDOW = 50, 1.0
"""The account's limit: the gateways widen the window by at least 1 s (RateGate), so 500 jobs
take about 20 s to go out."""
DRAIN = 20.0


async def cancel_at(stub: pb_grpc.DispatchServiceStub, job_id: str, delay: float) -> str:
    await asyncio.sleep(delay)
    try:
        await stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return "refused: " + (exc.details() or "").split(": ", 1)[0].split(" ", 2)[2]
    return "canceled"


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("sandbox_options", [{"sync_delay": 0.2, "sync_delay_max": 0.6}])
async def test_500_cancels_across_three_gateway_processes_on_nats(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server()
    gateways = [
        gateway_process(
            gateway_env(sandbox, tls, tmp_path)
            | {
                "GATEWAY_STORE": nats.url,
                "GATEWAY_UPSTREAM_RATE": f"{PROCESS_RATE}/{PROCESS_WINDOW:g}s",
            },
            tmp_path / f"gateway-{i}.log",
        )
        for i in range(REPLICAS)
    ]
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for gateway in gateways:
            await gateway.start()
            stack.push_async_callback(gateway.stop)
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(gateway.env["GATEWAY_GRPC_ADDR"])
            )
            stubs.append(pb_grpc.DispatchServiceStub(channel))
        started = time.monotonic()
        jobs = [
            (await stubs[i % REPLICAS].Dispatch(email_request(), timeout=CALL_TIMEOUT)).job.job_id
            for i in range(JOBS)
        ]
        outcomes = await asyncio.gather(
            *(cancel_at(random.choice(stubs), job_id, random.uniform(0, DRAIN)) for job_id in jobs)
        )

        async def ended() -> bool:
            found = await asyncio.gather(
                *(stubs[0].GetJob(pb.GetJobRequest(job_id=j), timeout=CALL_TIMEOUT) for j in jobs)
            )
            return all(job.state in ENDED for job in found)

        await until_all(ended)
        elapsed = time.monotonic() - started
        terminal: collections.Counter[str] = collections.Counter()
        async for event in stubs[1].Subscribe(pb.SubscribeRequest(), timeout=CALL_TIMEOUT):
            terminal[event.job_id] += event.terminal
            if sum(terminal.values()) == JOBS:
                break

    sent = collections.Counter(r.idempotency_key for r in sandbox.sandbox.requests)
    split = collections.Counter(outcomes)
    for job_id, outcome in zip(jobs, outcomes, strict=True):
        assert terminal[job_id] == 1, job_id
        assert sent[job_id] == (0 if outcome == "canceled" else 1), (job_id, outcome)
    refusals = ", ".join(f"{k}: {v}" for k, v in sorted(split.items()) if k != "canceled")
    print(
        f"\ncancel race across {REPLICAS} gateway processes on NATS ({JOBS} jobs, "
        f"{elapsed:.1f} s): canceled and never sent {split['canceled']}, sent once and the "
        f"cancel refused {JOBS - split['canceled']} ({refusals}); upstream requests "
        f"{sum(sent.values())}"
    )
