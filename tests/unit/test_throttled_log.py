"""rpc/throttled_log: lines about callers' input are one line each, and a few a minute."""

from __future__ import annotations

import logging

import pytest

from dispatcher_gateway.rpc.throttled_log import ThrottledLog, one_line


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_cut_and_the_next_line_says_how_many_were_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.throttled"), per_minute=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.throttled"):
        logged = [throttled.log(logging.INFO, "bad", "bad input %d", n) for n in range(10)]
        assert throttled.log(logging.INFO, "other", "another kind")
        clock.now += 20.0  # one line's worth of budget back
        assert throttled.log(logging.INFO, "bad", "bad input again")
    assert logged == [True] * 3 + [False] * 7
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1] == "bad input again (7 similar lines held back)"
    assert len(lines) == 5


def test_one_line_flattens_and_cuts_caller_text() -> None:
    assert one_line("a\nb\r\n  c") == "a b c"
    cut = one_line("x" * 1000, 50)
    assert len(cut) == 50
    assert cut.endswith("...")
