"""How long the fuzzer runs, and what it counted: Hypothesis run in rounds until an edge's share
of the time budget, or its examples, are spent.

`FUZZ_BUDGET` (seconds, for the whole module) selects the profile: unset, the short one that
`make test` runs (about a minute in all, each edge capped at its `max_examples`); set (`make fuzz`
sets 600), the long one, bounded by time alone.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

BUDGET_ENV = "FUZZ_BUDGET"
SHORT_BUDGET = 40.0
"""Seconds of fuzzing in `make test`, shared by the edges (each also starts a gateway and checks
it afterwards: a few seconds more)."""
LONG_MAX_EXAMPLES = 10**9
"""The long profile has no cap but its time."""
ROUND = 50
"""Examples of one Hypothesis run. Runs follow each other until the edge's time or examples are
spent: Hypothesis itself knows no time budget."""

settings.register_profile(
    "fuzz",
    deadline=None,
    database=None,
    print_blob=True,
    derandomize=False,
    phases=(Phase.generate, Phase.shrink),
    # Inputs are large on purpose (1 MiB bodies, 30 levels of nesting), and each is a network
    # round trip to another process.
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Budget:
    seconds: float
    long: bool

    @classmethod
    def from_env(cls) -> Budget:
        value = os.environ.get(BUDGET_ENV, "").strip()
        if not value:
            return cls(SHORT_BUDGET, long=False)
        return cls(float(value), long=True)

    def share(self, weight: float) -> float:
        return self.seconds * weight

    def describe(self) -> str:
        if self.long:
            return f"long profile: {BUDGET_ENV}={self.seconds:g} s, no cap on examples"
        return (
            f"short profile: {self.seconds:g} s and a cap on examples per edge "
            f"(set {BUDGET_ENV} for a longer run: make fuzz)"
        )


@dataclass
class EdgeReport:
    edge: str
    tried: int = 0
    """Inputs sent (shrinking included, should a failure be shrunk)."""
    failures: int = 0
    """Inputs that broke the property."""
    seconds: float = 0.0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    """What the inputs were answered: HTTP statuses or gRPC codes."""
    jobs_read: int | None = None
    """After the fuzzing: jobs listed and read with GetJob (None: not checked, a failure)."""
    events_read: int | None = None
    """After the fuzzing: stored events a Subscribe from the start read, as stored."""

    def line(self) -> str:
        common = ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common(8))
        after = (
            "after: not checked"
            if self.events_read is None
            else f"after: {self.jobs_read} jobs read, {self.events_read} events delivered"
        )
        return (
            f"{self.edge:<10} {self.tried:>6} inputs  {self.failures} failures  "
            f"{self.seconds:5.1f} s  {after}\n{'':<12}answers: {common}"
        )


REPORTS: list[EdgeReport] = []
"""Every edge fuzzed in this session, for the terminal summary (conftest.py)."""


def fuzz(
    edge: str,
    inputs: st.SearchStrategy[T],
    check: Callable[[T, EdgeReport], None],
    *,
    seconds: float,
    max_examples: int,
) -> EdgeReport:
    """Check `inputs` until `seconds` or `max_examples` are spent; raises what Hypothesis raises
    on a falsified property (after shrinking the input)."""
    report = EdgeReport(edge)
    REPORTS.append(report)
    started = time.monotonic()

    @settings(settings.get_profile("fuzz"), max_examples=min(ROUND, max_examples))
    @given(inputs)
    def one(value: Any) -> None:
        report.tried += 1
        try:
            check(value, report)
        except BaseException:
            report.failures += 1
            raise

    try:
        while report.tried < max_examples and time.monotonic() - started < seconds:
            one()
    finally:
        report.seconds = time.monotonic() - started
    return report
