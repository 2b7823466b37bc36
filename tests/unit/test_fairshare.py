"""The fair share of the upstream rate (core/fairshare.py): the order across clients by weight,
the estimate, and the outbox worker handing out entries in that order on the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from dispatcher_gateway.core.fairshare import FairShare, estimate
from dispatcher_gateway.core.gateway import Gateway
from dispatcher_gateway.core.model import DispatchSpec, Mode, Priority, QueueDepth, Service
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.store.memory import MemoryStore

from ..support.core import NEVER_OPENS, build_core, running_outbox
from ..support.upstream import ScriptedUpstream

NOW = 1_700_000_000.0
PER_SECOND = RateLimit(10, 1.0)
WAIT_TIMEOUT = 10.0


def sent(fair: FairShare, clients: set[str], count: int) -> list[str]:
    """`count` entries handed out while `clients` all have some."""
    picks = []
    for _ in range(count):
        [client] = fair.plan(clients, 1)
        fair.charge(client)
        picks.append(client)
    return picks


def test_two_clients_of_the_same_weight_alternate() -> None:
    assert FairShare().plan({"a", "b"}, 6) in (["a", "b"] * 3, ["b", "a"] * 3)


def test_weights_share_in_proportion() -> None:
    fair = FairShare({"a": 3, "b": 1}.__getitem__)

    picks = sent(fair, {"a", "b"}, 400)

    assert (picks.count("a"), picks.count("b")) == (300, 100)
    assert all(picks[i : i + 4].count("b") == 1 for i in range(0, 400, 4))


def test_a_client_alone_gets_every_entry() -> None:
    assert FairShare().plan({"a"}, 5) == ["a"] * 5


def test_plan_changes_nothing_until_charged() -> None:
    fair = FairShare()
    fair.plan({"a", "b"}, 10)

    assert fair.plan({"a", "b"}, 2) == fair.plan({"a", "b"}, 2)


def test_a_client_that_starts_late_gets_its_share_at_once_and_no_more() -> None:
    fair = FairShare()
    sent(fair, {"a"}, 1000)

    picks = sent(fair, {"a", "b"}, 20)

    assert picks.count("b") == 10
    assert all(picks[i : i + 2].count("b") == 1 for i in range(0, 20, 2))


def test_unused_share_goes_to_the_others() -> None:
    fair = FairShare({"a": 1, "b": 1, "c": 2}.__getitem__)
    sent(fair, {"a", "b", "c"}, 40)

    picks = sent(fair, {"a", "c"}, 30)

    assert (picks.count("a"), picks.count("c")) == (10, 20)


def test_the_estimate_of_a_job_with_nothing_ahead_is_now() -> None:
    found = estimate("a", Priority.NORMAL, {}, weights=lambda c: 1, rate=PER_SECOND, now=NOW)

    assert (found.jobs_ahead, found.expected_submit_time) == (0, NOW)


def test_the_estimate_counts_the_clients_jobs_of_its_priority_or_higher() -> None:
    backlog = {
        "a": {
            Priority.HIGH: QueueDepth(2),
            Priority.NORMAL: QueueDepth(30, other=5),
            Priority.LOW: QueueDepth(100),
        }
    }

    normal = estimate("a", Priority.NORMAL, backlog, weights=lambda c: 1, rate=PER_SECOND, now=NOW)
    high = estimate("a", Priority.HIGH, backlog, weights=lambda c: 1, rate=PER_SECOND, now=NOW)

    assert (normal.jobs_ahead, normal.expected_submit_time) == (32, NOW + 3.2)
    assert (high.jobs_ahead, high.expected_submit_time) == (2, NOW + 0.2)


def test_the_estimate_shares_the_rate_with_the_others_by_weight_up_to_their_backlog() -> None:
    backlog = {
        "a": {Priority.NORMAL: QueueDepth(9)},
        "big": {Priority.NORMAL: QueueDepth(2000)},
        "small": {Priority.LOW: QueueDepth(3)},
    }
    weights = {"a": 1, "big": 2, "small": 1}.__getitem__

    found = estimate("a", Priority.NORMAL, backlog, weights=weights, rate=PER_SECOND, now=NOW)

    # 10 of a's own, 20 of big's (twice a's weight), 3 of small's (all it has): the 33rd sent.
    assert (found.jobs_ahead, found.expected_submit_time) == (9, NOW + 3.2)


@contextlib.asynccontextmanager
async def outbox(weights: dict[str, int]) -> AsyncIterator[tuple[Gateway, ScriptedUpstream]]:
    store = MemoryStore()
    await store.open()
    upstream = ScriptedUpstream()
    gateway = build_core(
        store,
        upstream,
        rate=PER_SECOND,
        breaker_threshold=NEVER_OPENS,
        weights=lambda client: weights.get(client, 1),
    )
    try:
        yield gateway, upstream
    finally:
        await store.close()


async def queue(gateway: Gateway, client: str, priority: Priority = Priority.NORMAL) -> str:
    spec = DispatchSpec((Service.ESIGN,), Mode.ASYNC, {"template": {"id": 1}}, priority=priority)
    return (await gateway.dispatches.submit(client, spec, budget=None)).job_id


async def sent_upstream(upstream: ScriptedUpstream, count: int) -> list[str]:
    async with asyncio.timeout(WAIT_TIMEOUT):
        while len(upstream.calls) < count:
            await asyncio.sleep(0.01)
    return upstream.keys[:count]


async def test_the_outbox_sends_clients_by_weight_and_each_clients_jobs_by_priority() -> None:
    async with outbox({"a": 1, "b": 3}) as (gateway, upstream):
        a_jobs = [await queue(gateway, "a") for _ in range(8)]
        b_jobs = [await queue(gateway, "b") for _ in range(6)]
        urgent = await queue(gateway, "a", Priority.HIGH)
        async with running_outbox(gateway):
            order = await sent_upstream(upstream, 8)

    owners = ["a" if key in [*a_jobs, urgent] else "b" for key in order]
    assert (owners.count("a"), owners.count("b")) == (2, 6)
    assert [key for key in order if key not in b_jobs] == [urgent, a_jobs[0]]


async def test_the_estimate_is_on_the_answer_and_in_the_queued_event() -> None:
    async with outbox({}) as (gateway, _):
        for _ in range(20):
            await queue(gateway, "a")
        spec = DispatchSpec((Service.ESIGN,), Mode.ASYNC, {"template": {"id": 1}})
        job, found = await gateway.dispatches.submit_estimated("a", spec, budget=None)
        [queued] = await gateway.dispatches.store.read_events(client="a", job_id=job.job_id)

    assert found is not None
    assert found.jobs_ahead == 20
    assert queued.data == {"estimate": found.to_json()}
