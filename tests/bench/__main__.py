"""`python -m tests.bench [--size tiny] [--only B1,B3] [--out bench-results]`"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .benches import BENCHES, FULL, TINY, Outcome
from .report import table, write_chart, write_json


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma separated ids")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    scale = FULL if args.size == "full" else TINY
    wanted = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHES)}")

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    total = Outcome([])
    for name in wanted:
        began = time.monotonic()
        print(f"{name} ...", file=sys.stderr, flush=True)
        outcome = BENCHES[name](scale, work)
        print(f"{name} done in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        total.rows.extend(outcome.rows)
        total.samples.update(outcome.samples)
    wall = time.monotonic() - started
    total.rows.sort(key=lambda row: row.id)

    print(table(total.rows))
    write_json(args.out / "results.json", total, scale, wall)
    print(f"\nresults: {args.out / 'results.json'}")
    print(write_chart(args.out / "latency.png", total.samples))
    print(f"wall time: {wall:.0f} s (scale {scale.name}); logs under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
