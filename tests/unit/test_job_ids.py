"""Job ids: the shape clients have always seen (job_ and 32 hex digits), in creation order."""

from __future__ import annotations

import re

import pytest

from dispatcher_gateway.core import dispatch
from dispatcher_gateway.core.dispatch import new_job_id


def test_a_job_id_is_job_and_32_hex_digits() -> None:
    ids = {new_job_id() for _ in range(10_000)}

    assert len(ids) == 10_000
    assert all(re.fullmatch(r"job_[0-9a-f]{32}", job_id) for job_id in ids)


def test_job_ids_sort_in_the_order_of_their_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000))
    monkeypatch.setattr(dispatch.time, "time_ns", lambda: next(clock))

    ids = [new_job_id() for _ in range(1_000)]

    assert ids == sorted(ids)
    assert 1_700_000_000_000 <= int(ids[0][4:16], 16) < int(ids[-1][4:16], 16)
