"""The workers' datagrams (store/sqlite/wake.py): taken from a process of this user only, as the
kernel says who sent them; anyone else's is dropped unread, so no other local user can put an
event on a stream."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

import pytest

from dispatcher_gateway.core.model import JobEvent
from dispatcher_gateway.store.sqlite import wake
from dispatcher_gateway.store.sqlite.wake import Neighbours

from ..support.builders import event_for, new_job

QUIET = 0.2
"""Seconds a datagram that is not delivered is waited for."""
EVENT = event_for(new_job())


def _event(cursor: int) -> JobEvent:
    return EVENT.replace(cursor=str(cursor))


async def _deliveries(receiver: Neighbours, send: bytes) -> list[list[JobEvent] | None]:
    """What `receiver` delivers of one datagram `send` from this process to it."""
    got: list[list[JobEvent] | None] = []
    arrived = asyncio.Event()

    def deliver(events: list[JobEvent] | None) -> None:
        got.append(events)
        arrived.set()

    receiver.listen(deliver)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(send, receiver._name(receiver.index))
        try:
            async with asyncio.timeout(QUIET):
                await arrived.wait()
        except TimeoutError:
            pass
    finally:
        receiver.close()
    return got


async def test_a_datagram_from_this_user_is_delivered() -> None:
    data = wake._encode([_event(7)])

    got = await _deliveries(Neighbours(secrets.token_hex(4), 0, 2), data)

    assert got == [[_event(7)]]


async def test_a_datagram_from_another_user_is_dropped_unread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The receiver runs as another user than the sender (this process): what the kernel says of
    # the sender is what is checked, not what the datagram says.
    monkeypatch.setattr(wake.os, "getuid", lambda: os.geteuid() + 1)
    forged = wake._encode([_event(1)])

    with caplog.at_level(logging.WARNING, logger="dispatcher_gateway.store"):
        got = await _deliveries(Neighbours(secrets.token_hex(4), 0, 2), forged)

    assert got == []
    assert f"from another user (the last from uid {os.geteuid()})" in caplog.text
