"""A gateway process given webhooks as fast as it takes them keeps feeding the stream of a client
that reads: a gRPC stream sends one message per turn of the event loop, so without the receiver
waiting for lagging streams (core/hub.py) a saturated loop fell behind its subscriber and cut it
off as too slow (B2's one-worker row, in most runs)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.bench import load, procs
from tests.bench.benches import create_jobs
from tests.support.metrics import sample

SECONDS = 3.0
WARMUP = 0.5
CONNECTIONS = 32
"""B2's load: more webhooks at once than one process records, on keep-alive connections."""
JOBS = 20
BUDGET = 60.0
"""Seconds for a load process to report (the run lasts SECONDS + WARMUP)."""


def test_a_worker_saturated_with_webhooks_keeps_its_reading_subscriber(tmp_path: Path) -> None:
    with procs.gateway(tmp_path, store=str(tmp_path / "gateway.db")) as (_, addrs):
        jobs = create_jobs(addrs.grpc, JOBS)
        stop = procs.SPAWN.Event()
        subscriber = procs.Workers()
        subscriber.start(load.count_events, addrs.grpc, stop, BUDGET)
        try:
            procs.wait_streams(addrs.readyz, 1)
            sent = procs.run(
                load.webhook_load,
                addrs.webhook_port,
                jobs,
                SECONDS,
                WARMUP,
                CONNECTIONS,
                timeout=BUDGET,
            )
        finally:
            stop.set()
        counted = subscriber.results(BUDGET)[0]
        recorded = procs.webhooks_by_worker(addrs.admin_port)["0"]
        # How often the stream held webhooks back, for the messages (it depends on the machine).
        page = httpx.get(f"http://{procs.HOST}:{addrs.admin_port}/metrics").text
        held = sample(page, "dispatcher_gateway_webhooks_held_total")

    assert set(sent["statuses"]) == {200}, sent["statuses"]
    assert sent["accepted"] > 0
    assert counted["ended"] is None, f"the stream was ended ({counted['ended']}; {held:.0f} held)"
    # Every webhook recorded, warm-up included, reached the stream, once.
    assert counted["webhooks"] == recorded, (counted, recorded, held)
