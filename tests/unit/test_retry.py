import random

import pytest

from dispatcher_gateway.core.retry import RateLimit, RetryPolicy


@pytest.mark.parametrize(
    ("text", "limit", "window"),
    [("100/min", 100, 60.0), ("5/s", 5, 1.0), ("6000/h", 6000, 3600.0), ("100/30s", 100, 30.0)],
)
def test_rate_parses(text: str, limit: int, window: float) -> None:
    assert RateLimit.parse(text) == RateLimit(limit, window)


@pytest.mark.parametrize("text", ["100", "x/min", "100/fortnight", "0/min", "-1/s"])
def test_bad_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"COUNT/PERIOD|period|positive|invalid literal"):
        RateLimit.parse(text)


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    delays = [policy.delay(attempt) for attempt in range(20) for _ in range(20)]
    assert all(0.0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) > 100


def test_backoff_doubles_from_the_base_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wait is drawn from [0, min(cap, base * 2**attempts)]: with the draw at the top of
    its range, the waits are the range's ceilings themselves."""
    ranges: list[tuple[float, float]] = []

    def top(low: float, high: float) -> float:
        ranges.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", top)
    policy = RetryPolicy(base=0.5, cap=6.0)
    delays = [policy.delay(attempt) for attempt in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    assert ranges == [(0.0, ceiling) for ceiling in delays]
    # Far past the cap, the exponent is bounded and the wait stays the cap.
    assert policy.delay(10_000) == 6.0


def test_backoff_with_the_draw_at_its_bottom_is_no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    policy = RetryPolicy(base=0.5, cap=6.0)
    assert [policy.delay(attempt) for attempt in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert policy.delay(3, retry_after=2.5) == 2.5


def test_backoff_never_sooner_than_retry_after() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    assert all(policy.delay(0, retry_after=7.5) >= 7.5 for _ in range(50))
