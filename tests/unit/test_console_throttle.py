"""Failed console logins: a few, then a pause; per address and name, and per address."""

from __future__ import annotations

from dispatcher_gateway.console.throttle import LIMIT, PEER_LIMIT, WINDOW, LoginGuard, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_refused_after_the_limit_until_its_oldest_failure_ages_out() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60.0, clock=clock)
    for _ in range(2):
        throttle.failed("k")
        clock.now += 10
    assert throttle.wait("k") == 0.0

    throttle.failed("k")  # the third, at 1020

    assert throttle.wait("k") == 40.0  # the first (1000) ages out at 1060
    clock.now = 1060.0
    assert throttle.wait("k") == 0.0
    assert throttle.wait("other") == 0.0


def test_a_success_clears_the_count_and_memory_stays_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(2, 60.0, most_keys=3, clock=clock)
    throttle.failed("a")
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.wait("a") == 0.0

    for key in ("b", "c", "d", "e"):
        throttle.failed(key)
        throttle.failed(key)

    assert [throttle.wait(key) > 0 for key in ("b", "c", "d", "e")] == [False, True, True, True]


def test_the_guard_counts_per_address_and_name_and_per_address() -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    for _ in range(LIMIT):
        guard.attempt("10.0.0.1", "ops")

    assert guard.wait("10.0.0.1", "ops") == WINDOW
    assert guard.wait("10.0.0.1", "other") == 0.0  # a name of its own
    assert guard.wait("10.0.0.2", "ops") == 0.0  # nobody locks "ops" out from elsewhere

    for index in range(PEER_LIMIT - LIMIT):
        guard.attempt("10.0.0.1", f"name-{index}")
    assert guard.wait("10.0.0.1", "yet-another") == WINDOW


def test_a_good_login_takes_back_its_own_attempt_only() -> None:
    guard = LoginGuard(Clock())
    for _ in range(LIMIT - 1):
        guard.attempt("10.0.0.1", "ops")
    guard.attempt("10.0.0.1", "ops")  # the good one, counted while its password is checked
    assert guard.wait("10.0.0.1", "ops") == WINDOW

    guard.succeeded("10.0.0.1", "ops")

    assert guard.wait("10.0.0.1", "ops") == 0.0
    assert len(guard.per_peer._failures["10.0.0.1"]) == LIMIT - 1
