"""Neighbours: the other processes writing to the same file (a gateway's workers,
GATEWAY_WORKERS), handed the events of each commit, so that their tails have them at once rather
than at their next poll of the file (tail.py's TAIL_POLL_INTERVAL).

Each process of the group binds one datagram socket in Linux's abstract namespace (no file, gone
with the process), named by the group and its index; a commit sends its events, with their
cursors, in one datagram to each of the others, or an empty datagram ("read the file") when they
would not fit in one. A tail takes them as it takes this process's commits (in cursor order,
reading the file on a gap), so a datagram lost (a neighbour restarting, or too far behind to
take it) costs a read of the file at the next gap or poll, never an event.

Any local process can send to a name in the abstract namespace (there is no file whose mode
would keep it out): a datagram is taken only from a process of this user, as the kernel tells
(SO_PASSCRED), who could write to the database anyway. Another user's is dropped unread, so it
cannot put an event on anyone's stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

from ...core.model import JobEvent, JobState, Service
from .. import codec

NAME_PREFIX: Final = "dispatcher-gateway"
MAX_DATAGRAM: Final = 64 * 1024
"""Bytes of events sent in one datagram; more, and the datagram is empty: read the file."""
RECEIVE_BATCH: Final = 64
"""Datagrams taken per wake-up of the loop."""
_UCRED: Final = struct.Struct("3i")
"""struct ucred: the sender's pid, uid and gid, as the kernel attaches them (SO_PASSCRED)."""
_ANCILLARY: Final = socket.CMSG_SPACE(_UCRED.size)
DROPPED_LOG_INTERVAL: Final = 60.0
"""Seconds between two warnings of datagrams dropped (another user can send them at will)."""

log = logging.getLogger("dispatcher_gateway.store")

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
        self._drops = 0
        self._drops_logged_at = -math.inf

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
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        uid = os.getuid()
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        self._receiver, self._sender = receiver, sender
        self._loop = asyncio.get_running_loop()

        def readable() -> None:
            for _ in range(RECEIVE_BATCH):
                try:
                    data, ancillary, _, _ = receiver.recvmsg(MAX_DATAGRAM, _ANCILLARY)
                except OSError:  # BlockingIOError: none left
                    return
                sender_uid = _sender_uid(ancillary)
                if sender_uid != uid:
                    self._dropped(sender_uid)
                    continue
                deliver(_decode(data) if data else None)

        self._loop.add_reader(receiver.fileno(), readable)

    def _dropped(self, sender_uid: int | None) -> None:
        self._drops += 1
        now = time.monotonic()
        if now - self._drops_logged_at >= DROPPED_LOG_INTERVAL:
            log.warning(
                "%d datagram(s) from another user (the last from uid %s) to the workers' socket "
                "%s dropped",
                self._drops,
                sender_uid,
                self._name(self.index)[1:].decode(),
            )
            self._drops, self._drops_logged_at = 0, now

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


def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The sending process's user, from the credentials the kernel attached; None if none."""
    for level, kind, data in ancillary:
        if (
            level == socket.SOL_SOCKET
            and kind == socket.SCM_CREDENTIALS
            and len(data) >= _UCRED.size
        ):
            return int(_UCRED.unpack_from(data)[1])
    return None


def _encode(events: list[JobEvent]) -> bytes:
    """The events as one JSON array of rows, each its fields in the order `_decode` reads them
    (the datagram is the workers' own: shorter than objects, and read without the keys)."""
    return codec.dumps(
        [
            [
                e.cursor,
                e.job_id,
                e.client,
                e.service.value,
                e.type,
                e.state.value,
                e.data,
                dict(e.metadata),
                e.event_time,
                e.dispatch_id,
                e.terminal,
                e.record_time,
            ]
            for e in events
        ]
    ).encode()


def _decode(data: bytes) -> list[JobEvent] | None:
    """None for what does not decode (read the file instead)."""
    try:
        return [
            JobEvent(
                job_id=job_id,
                client=client,
                service=codec.member(Service, service),
                type=kind,
                state=codec.member(JobState, state),
                data=event_data,
                metadata=metadata,
                event_time=event_time,
                dispatch_id=dispatch_id,
                terminal=bool(terminal),
                cursor=cursor,
                record_time=record_time,
            )
            for (
                cursor,
                job_id,
                client,
                service,
                kind,
                state,
                event_data,
                metadata,
                event_time,
                dispatch_id,
                terminal,
                record_time,
            ) in json.loads(data)
        ]
    except (ValueError, TypeError, KeyError):
        return None
