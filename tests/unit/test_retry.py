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


def test_backoff_never_sooner_than_retry_after() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    assert all(policy.delay(0, retry_after=7.5) >= 7.5 for _ in range(50))
