"""A free loopback port for a server that must be named before it starts: a NATS node's cluster
port (the other nodes' routes name it), a gateway process's listeners (its environment names them).

Asking the kernel for port 0 and closing the socket leaves a window in which the kernel hands the
same port to someone else: every outgoing connection and every `bind(("", 0))` draws from the
ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default), and a full test run
makes thousands of them. So the ports given here come from below that range, where the kernel
never assigns one by itself; each is checked free, picked at random (several test processes may
pick at once), and never given twice by one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
LOWEST = 10_000
"""Below this, ports other software claims by name (databases, brokers, dev servers)."""
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
ATTEMPTS = 200
UNSAFE = frozenset({10080})
"""Ports at or above LOWEST that browsers refuse to open (Chromium's and Firefox's restricted
ports: ERR_UNSAFE_PORT), which would fail a console test at random."""

_pick = random.SystemRandom()
"""Not the `random` module's generator, which a test run may seed the same in every process."""
_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nobody listens on, outside the kernel's ephemeral range."""
    top = _ephemeral_start()
    if top - LOWEST >= ATTEMPTS:
        for _ in range(ATTEMPTS):
            port = _pick.randrange(LOWEST, top)
            if port not in _given and port not in UNSAFE and _is_free(port):
                _given.add(port)
                return port
    # No room below the ephemeral range on this machine: the kernel's pick, with its window.
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    _given.add(port)
    return port
