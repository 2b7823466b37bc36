"""Neighbours: the other processes writing to the same file (a gateway's workers,
GATEWAY_WORKERS), handed the events of each commit, so that their tails have them at once rather
than at their next poll of the file (tail.py's TAIL_POLL_INTERVAL).

Each process of the group binds one datagram socket in Linux's abstract namespace (no file, gone
with the process), named by the group and its index; a commit sends its events, with their
cursors, in one datagram to each of the others, or an empty datagram ("read the file") when they
would not fit in one. A tail takes them as it takes this process's commits (in cursor order,
reading the file on a gap), so a datagram lost (a neighbour restarting, or too far behind to
take it) costs a read of the file at the next gap or poll, never an event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Final

from ...core.model import JobEvent
from .. import codec

NAME_PREFIX: Final = "dispatcher-gateway"
MAX_DATAGRAM: Final = 64 * 1024
"""Bytes of events sent in one datagram; more, and the datagram is empty: read the file."""
RECEIVE_BATCH: Final = 64
"""Datagrams taken per wake-up of the loop."""

Delivery = Callable[[list[JobEvent] | None], None]
"""Called with a neighbour's committed events, in cursor order; None: read the file."""


class Neighbours:
    def __init__(self, group: str, index: int, count: int) -> None:
        """Process `index` of `count` in `group` (a name the group's processes share)."""
        if not 0 <= index < count:
            raise ValueError(f"index {index} outside 0..{count - 1}")
        self.group = group
        self.index = index
        self._peers = [self._name(i) for i in range(count) if i != index]
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _name(self, index: int) -> bytes:
        return f"\0{NAME_PREFIX}/{self.group}/{index}".encode()

    def listen(self, deliver: Delivery) -> None:
        """Bind this process's socket and call `deliver` (on the running loop) with what each
        neighbour's commit sends."""
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.bind(self._name(self.index))
        except OSError:
            receiver.close()
            raise
        receiver.setblocking(False)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        self._receiver, self._sender = receiver, sender
        self._loop = asyncio.get_running_loop()

        def readable() -> None:
            for _ in range(RECEIVE_BATCH):
                try:
                    data = receiver.recv(MAX_DATAGRAM)
                except OSError:  # BlockingIOError: none left
                    return
                deliver(_decode(data) if data else None)

        self._loop.add_reader(receiver.fileno(), readable)

    def notify(self, events: list[JobEvent]) -> None:
        """From any thread, after a commit: hand its events to every neighbour. Never blocks,
        never raises."""
        sender = self._sender
        if sender is None or not self._peers:
            return
        data = _encode(events)
        if len(data) > MAX_DATAGRAM:
            data = b""
        for peer in self._peers:
            # ConnectionRefusedError: not there (restarting); BlockingIOError: its queue is full
            # (it will read the file on the gap this leaves).
            with contextlib.suppress(OSError):
                sender.sendto(data, peer)

    def close(self) -> None:
        if self._receiver is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop holds no reader
                self._loop.remove_reader(self._receiver.fileno())
        for sock in (self._receiver, self._sender):
            if sock is not None:
                sock.close()
        self._receiver = self._sender = None
        self._loop = None


def _encode(events: list[JobEvent]) -> bytes:
    return codec.dumps([[e.cursor, codec.event_to_json(e)] for e in events]).encode()


def _decode(data: bytes) -> list[JobEvent] | None:
    """None for what does not decode (read the file instead)."""
    try:
        return [codec.event_from_json(event, cursor) for cursor, event in json.loads(data)]
    except (ValueError, TypeError, KeyError):
        return None
