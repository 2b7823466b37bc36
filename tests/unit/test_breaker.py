from dispatcher_gateway.core.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(threshold=3, open_for=10.0, max_open_for=40.0, clock=clock)


def test_closed_lets_calls_through() -> None:
    b = breaker(Clock())
    assert b.wait() == 0.0
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    assert b.state is BreakerState.OPEN
    assert b.wait() == 10.0


def test_success_resets_the_count() -> None:
    b = breaker(Clock())
    b.failure()
    b.failure()
    b.success()
    b.failure()
    assert b.state is BreakerState.CLOSED


def test_one_probe_after_the_pause_then_closes_on_success() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 10.0
    assert b.wait() == 0.0
    assert b.state is BreakerState.HALF_OPEN
    b.calling()
    assert b.wait() > 0.0  # only one probe at a time
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.wait() == 0.0


def test_failed_probe_reopens_for_longer() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 10.0
    b.wait()
    b.calling()
    b.failure()
    assert b.state is BreakerState.OPEN
    assert b.wait() == 20.0
    assert b.describe()["times_opened"] == 2
