"""The outputs of `make bench`: one table on stdout, results.json, and latency.png."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import Any

from .benches import Outcome, Row, Scale, percentile

COLUMNS = ("id", "what", "figure", "baseline", "ratio", "target", "met?")
CHART_SERIES = (
    ("B1: async Dispatch, 50 in flight", ("B1 gateway", "B1 bare grpc.aio")),
    ("B3: webhook -> stream, 500/s", ("B3 SQLite", "B3 NATS")),
    ("B5: sync Dispatch via the sandbox", ("B5 gateway", "B5 httpx direct")),
)


def _cells(row: Row) -> tuple[str, ...]:
    ratio = "-" if row.ratio is None or math.isnan(row.ratio) else f"{row.ratio:.2f}"
    met = "-" if row.met is None else ("yes" if row.met else "NO")
    return (row.id, row.what, row.figure, row.baseline, ratio, row.target, met)


def table(rows: list[Row]) -> str:
    cells = [COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, outcome: Outcome, scale: Scale, wall_seconds: float) -> None:
    document = {
        "scale": dataclasses.asdict(scale),
        "wall_seconds": wall_seconds,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "rows": [dataclasses.asdict(r) for r in outcome.rows],
        "latency_ms": {
            name: {q: percentile(values, float(q[1:])) for q in ("p50", "p90", "p99", "p99.9")}
            for name, values in outcome.samples.items()
        },
    }
    path.write_text(json.dumps(_clean(document), indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def write_chart(path: Path, samples: dict[str, list[float]]) -> str:
    """The latency distributions of B1, B3 and B5 as a PNG; what was done, in one line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "chart not drawn: matplotlib is not installed "
            "(make bench installs it: pip install -e '.[bench]')"
        )
    panels = [
        (title, [(n, samples[n]) for n in names if samples.get(n)]) for title, names in CHART_SERIES
    ]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        return "chart not drawn: no latency samples"
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (title, series) in zip(axes[0], panels, strict=True):
        for name, values in series:
            ordered = sorted(values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            label = f"{name} (p50 {percentile(values, 50):.2f}, p99 {percentile(values, 99):.2f})"
            axis.plot(ordered, fractions, label=label)
        axis.set_xscale("log")
        axis.set_xlabel("latency (ms, log scale)")
        axis.set_ylabel("fraction of calls at or below")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"chart: {path}"
