"""Each benchmark of `make bench` (tests/bench) run once at a tiny size: it starts, measures
something real and reports it. The figures themselves mean nothing at this size."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from pathlib import Path

import pytest

from tests.bench.benches import (
    TINY,
    WORKERS,
    b1_dispatch,
    b2_webhooks,
    b3_latency,
    b4_streams,
    b5_sync,
    b7_background_sync,
    b8_workers,
)
from tests.bench.load import SYNC_WARMUP
from tests.bench.report import table, write_chart, write_json

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


def test_b1_dispatch_measures_workers_and_one_against_as_many_bare_servers(
    tmp_path: Path,
) -> None:
    outcome = b1_dispatch(TINY, tmp_path)
    workers, one, floor, b6 = outcome.rows
    assert (workers.id, one.id, floor.id, b6.id) == ("B1", "B1", "B1", "B6")
    assert f"GATEWAY_WORKERS={WORKERS}" in workers.what
    assert f"{WORKERS} processes" in workers.baseline
    for row in (workers, one, floor):
        for side in ("gateway", "baseline"):
            assert row.details[side]["per_second"] > 0
            assert row.details[side]["failures"] == 0
            assert row.details[side]["server_cpu_ms_per_call"] > 0
        assert row.ratio is not None
        assert row.ratio > 0
    assert b6.details["ceiling_per_second"] > 0
    assert outcome.samples[f"B1 gateway, {WORKERS} workers"]
    assert outcome.samples[f"B1 bare grpc.aio, {WORKERS} processes"]


def test_b2_webhooks_are_stored_and_fanned_out_by_workers_and_one(tmp_path: Path) -> None:
    workers, one, floor, b6 = b2_webhooks(TINY, tmp_path).rows
    assert (workers.id, one.id, floor.id, b6.id) == ("B2", "B2", "B2", "B6")
    # The floor's servers wrote and sent every webhook they took, to their own subscribers.
    assert floor.details["gateway"]["per_second"] > 0
    assert floor.details["gateway"]["fanned_out"] >= floor.details["gateway"]["per_second"] * (
        TINY.seconds
    )
    assert set(floor.details["gateway"]["statuses"]) == {200}
    for row in (workers, one):
        gateway = row.details["gateway"]
        assert gateway["per_second"] > 0
        assert set(gateway["statuses"]) == {200}
        assert gateway["fanned_out"] >= gateway["per_second"] * TINY.seconds
        assert sum(gateway["per_worker"].values()) >= gateway["per_second"] * TINY.seconds
        assert set(row.details["baseline"]["statuses"]) == {200}
    assert set(workers.details["gateway"]["per_worker"]) <= {str(i) for i in range(WORKERS)}
    assert set(one.details["gateway"]["per_worker"]) == {"0"}


def test_b8_compares_two_workers_with_one(tmp_path: Path) -> None:
    outcome = b8_workers(TINY, tmp_path)
    reuse_port, shared, latency = outcome.rows
    for row in (reuse_port, shared):
        assert row.details["per_second"] > 0
        assert row.details["one_worker_per_second"] > 0
        assert set(row.details["statuses"]) == {200}
    assert latency.details["complete"] == {"1": True, str(WORKERS): True}
    assert latency.details[str(WORKERS)]["count"] == latency.details["1"]["count"] > 0
    assert outcome.samples[f"B8 {WORKERS} worker(s)"]


def test_b3_times_every_webhook_to_the_stream_on_sqlite_and_nats(tmp_path: Path) -> None:
    outcome = b3_latency(TINY, tmp_path)
    *paced, knee = outcome.rows
    assert [row.what.split(" at ", 1)[1] for row in paced] == [
        f"{TINY.paced_rate:g}/s, SQLite (p50/p99)",
        f"{TINY.reference_rate:g}/s, SQLite (p50/p99)",
        f"{TINY.paced_rate:g}/s, NATS (p50/p99)",
        f"{TINY.reference_rate:g}/s, NATS (p50/p99)",
    ]
    for row in paced:
        assert row.details["count"] == row.details["expected"] > 0
        assert 0 < row.details["p50_ms"] <= row.details["p99_ms"]
    assert knee.what.startswith(f"webhooks offered at {TINY.knee_rate:g}/s")
    assert (
        knee.details["accepted"]["count"] + knee.details["refused"]["count"] == knee.details["sent"]
    )
    assert knee.details["refusals_without_retry_after"] == 0


def test_b7_sends_every_background_sync_job_within_the_rate(tmp_path: Path) -> None:
    (b7,) = b7_background_sync(TINY, tmp_path).rows
    assert b7.details["ended"] == {"dispatch_completed": TINY.background_jobs}
    assert b7.details["sends"] == TINY.background_jobs
    assert 0 < b7.details["most_sent_in_one_window"] <= b7.details["limit"]
    assert b7.details["peak_in_flight"] > 0
    assert b7.ratio is not None
    assert b7.ratio > 0


def test_b4_reaches_every_stream_on_gateway_and_baseline(tmp_path: Path) -> None:
    memory, broadcast = b4_streams(TINY, tmp_path).rows
    assert broadcast.details["received"] == {"gateway": TINY.streams, "baseline": TINY.streams}
    assert memory.details["gateway"]["rss_mb"] > 0
    assert memory.details["gateway"]["broadcast_seconds"] > 0


def test_b5_times_sync_dispatch_and_the_direct_request(tmp_path: Path) -> None:
    outcome = b5_sync(TINY, tmp_path)
    assert len(outcome.samples["B5 gateway"]) == len(outcome.samples["B5 httpx direct"])
    assert len(outcome.samples["B5 gateway"]) == TINY.sync_calls
    assert outcome.rows[0].details["direct"]["p50_ms"] > 0
    assert outcome.rows[1].details["count"] == TINY.sync_calls  # the bare gRPC hop
    floor = outcome.rows[2].details  # the hop and two durable commits, side by side with it
    assert floor["floor"]["count"] == floor["two_commits"]["count"] == TINY.sync_calls
    assert outcome.rows[0].details["floor_p50_ms"] == floor["floor"]["p50_ms"]
    served = outcome.rows[3].details  # the floor server: a row, the upstream call, a row
    assert served["floor_server"]["count"] == TINY.sync_calls
    [store] = tmp_path.glob("floor-grpc-*.db")
    with contextlib.closing(sqlite3.connect(store)) as conn:
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    assert rows == 2 * (TINY.sync_calls + SYNC_WARMUP)


def test_report_prints_table_json_and_says_when_no_chart(tmp_path: Path) -> None:
    from tests.bench.benches import Outcome, Row

    outcome = Outcome(
        [Row("B1", "what", "2/s", "4/s", 0.5, ">= 0.5", True, {"p": math.nan})],
        {"B1 gateway": [1.0, 2.0]},
    )
    printed = table(outcome.rows)
    assert printed.splitlines()[0].split() == [
        "id",
        "what",
        "figure",
        "baseline",
        "ratio",
        "target",
        "met?",
    ]
    assert printed.splitlines()[2].split()[-4:] == ["0.50", ">=", "0.5", "yes"]
    write_json(tmp_path / "r.json", outcome, TINY, 1.0)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["rows"][0]["details"] == {"p": None}
    assert saved["latency_ms"]["B1 gateway"]["p50"] == 1.0
    said = write_chart(tmp_path / "c.png", outcome.samples)
    assert said.startswith(("chart: ", "chart not drawn: matplotlib is not installed"))
