"""Neighbours: the other processes writing to the same file (a gateway's workers,
GATEWAY_WORKERS), woken after each commit that appended events, so that their tails read the file
at once rather than at their next poll (tail.py's TAIL_POLL_INTERVAL).

Each process of the group binds one datagram socket in Linux's abstract namespace (no file, gone
with the process), named by the group and its index; a commit sends one empty datagram to each of
the others. A datagram says only "read the file": lost or coalesced ones cost nothing, a
neighbour not there (restarting) refuses it, and the poll remains the fallback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final

NAME_PREFIX: Final = "dispatcher-gateway"
RECEIVE_BATCH: Final = 256
"""Datagrams taken per wake-up of the loop (they are empty: only their arrival counts)."""


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

    def listen(self, on_wake: Callable[[], None]) -> None:
        """Bind this process's socket and call `on_wake` (on the running loop) when a neighbour
        committed."""
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
                    receiver.recv(1)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
            on_wake()

        self._loop.add_reader(receiver.fileno(), readable)

    def notify(self) -> None:
        """From any thread, after a commit: wake every neighbour. Never blocks, never raises."""
        sender = self._sender
        if sender is None:
            return
        for peer in self._peers:
            # ConnectionRefusedError/FileNotFoundError: not there (restarting); BlockingIOError:
            # its queue is full, so it has a wake-up pending already.
            with contextlib.suppress(OSError):
                sender.sendto(b"", peer)

    def close(self) -> None:
        if self._receiver is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop holds no reader
                self._loop.remove_reader(self._receiver.fileno())
        for sock in (self._receiver, self._sender):
            if sock is not None:
                sock.close()
        self._receiver = self._sender = None
        self._loop = None
