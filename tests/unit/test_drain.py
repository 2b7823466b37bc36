"""rpc/drain: the calls a drain waits for, counted while they run; new ones refused once it
has begun."""

from __future__ import annotations

import pytest

from dispatcher_gateway.core.errors import ShuttingDown
from dispatcher_gateway.rpc.drain import REFUSAL, Drain


async def test_calls_are_counted_while_they_run() -> None:
    drain = Drain()
    assert (drain.in_flight, drain.idle.is_set()) == (0, True)
    with drain.call():
        with drain.call():
            assert (drain.in_flight, drain.idle.is_set()) == (2, False)
        assert (drain.in_flight, drain.idle.is_set()) == (1, False)
    assert (drain.in_flight, drain.idle.is_set()) == (0, True)


async def test_a_call_that_fails_is_counted_out() -> None:
    drain = Drain()
    with pytest.raises(RuntimeError), drain.call():
        raise RuntimeError("the handler failed")
    assert (drain.in_flight, drain.idle.is_set()) == (0, True)


async def test_once_draining_new_calls_are_refused_and_those_in_flight_finish() -> None:
    drain = Drain()
    with drain.call():
        drain.start()
        with pytest.raises(ShuttingDown, match=f"^{REFUSAL}$"), drain.call():
            pass
        assert drain.in_flight == 1
    assert (drain.in_flight, drain.idle.is_set()) == (0, True)


async def test_busy_names_the_connections_with_a_call_running() -> None:
    drain = Drain()
    with drain.call("ipv4:127.0.0.1:50001"), drain.call(), drain.call("ipv4:127.0.0.1:50002"):
        assert drain.busy(settle=0) == {("127.0.0.1", 50001), ("127.0.0.1", 50002)}
    assert drain.busy(settle=60) == set()


async def test_once_draining_a_connection_stays_busy_while_its_last_status_leaves() -> None:
    drain = Drain()
    with drain.call("ipv6:%5B::1%5D:50001"):
        drain.start()
    assert drain.busy(settle=60) == {("::1", 50001)}
    assert drain.busy(settle=0) == set()
