"""The gRPC server's accepted connections, found among the process's sockets and closed from
under grpc: how a drain lets clients go without grpc's own shutdown.

grpcio sends GOAWAY only as part of `server.stop()`, and from that instant its core cancels
every call that reaches it (`CANCELLED`): those that arrive before the client has read the
GOAWAY, and those already received that no handler had taken up yet (many, when the event loop
is busy). A connection closed instead, once no call of its own is running, fails whatever the
client had sent on it with `UNAVAILABLE` ("Socket closed"), which it retries; its channel
reconnects, through the Service, to another replica. grpc's transport sees the closed socket as
a client gone and cleans up as usual."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import stat
import sys
import urllib.parse
from collections.abc import Collection, Iterator

FD_FOLDERS = ("/proc/self/fd", "/dev/fd")
"""Where the process's open file descriptors are listed (Linux, then BSD and macOS)."""

Address = tuple[str, int]

SO_ATTACH_FILTER = 26
"""Linux's socket option that attaches a classic BPF program to a socket (every architecture
but a few that grpcio does not ship for)."""


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_RETURN_NOTHING = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0 bytes kept
_DROP_EVERY_PACKET = bytes(_SockFprog(1, _RETURN_NOTHING))
"""The program, as setsockopt takes it: it points at _RETURN_NOTHING, which lives as long as
this module."""


def peer_address(peer: str) -> Address | None:
    """A grpc peer ("ipv4:10.0.0.7:51234", "ipv6:%5B::1%5D:51234") as (host, port); None for
    what is not TCP."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host, _, port = urllib.parse.unquote(rest).rpartition(":")
    try:
        return _host(host.strip("[]")), int(port)
    except ValueError:
        return None


def _host(host: str) -> str:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; grpc names them ipv4.
        return str(address.ipv4_mapped)
    return str(address)


def stop_accepting(ports: Collection[int]) -> int:
    """No new connection on `ports` from now on: a socket filter on each listening socket drops
    every packet that comes to it, so no handshake completes and grpc, which is not told, has
    nothing more to accept. A client that connects meanwhile waits, then is refused (and tries
    elsewhere) once grpc's shutdown closes the socket. Shut instead, a listening socket makes
    grpc log an error that is not one ("Failed accept4"), and not as JSON. Linux only; returns
    how many sockets were filtered."""
    if not sys.platform.startswith("linux"):
        return 0
    filtered = 0
    for sock in _sockets(ports):
        with contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_EVERY_PACKET)
                filtered += 1
    return filtered


def close_idle(ports: Collection[int], busy: Collection[Address]) -> tuple[set[Address], int]:
    """Every TCP connection accepted on `ports` whose client is not `busy` shut in both
    directions: the client reads the end at once, grpc's transport sees a client gone and
    releases the descriptor itself. Returns the clients closed and how many connections are left
    open (busy). The listening sockets are left alone (see stop_accepting)."""
    closed: set[Address] = set()
    left = 0
    for sock in _sockets(ports):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            host, port = sock.getpeername()[:2]
            peer = (_host(host), port)
            if peer in busy:
                left += 1
                continue
            sock.shutdown(socket.SHUT_RDWR)
            closed.add(peer)
        except (OSError, ValueError):  # closed meanwhile, or not connected
            continue
    return closed, left


def _sockets(ports: Collection[int]) -> Iterator[socket.socket]:
    """The process's TCP sockets bound to one of `ports`, each on a duplicate descriptor, open
    while the caller handles it."""
    for fd in _descriptors():
        with _socket(fd) as sock:
            if sock is None:
                continue
            try:
                bound = sock.getsockname()[1] in ports
            except OSError:
                continue
            if bound:
                yield sock


def listable() -> bool:
    """Whether this process can list its descriptors (else no connection is found)."""
    return any(os.path.isdir(folder) for folder in FD_FOLDERS)


def _descriptors() -> list[int]:
    for folder in FD_FOLDERS:
        try:
            return [int(name) for name in os.listdir(folder)]
        except (OSError, ValueError):
            continue
    return []


@contextlib.contextmanager
def _socket(fd: int) -> Iterator[socket.socket | None]:
    """A TCP socket on a duplicate of `fd` (closing it leaves `fd` open); None if `fd` is not
    one, or no longer open."""
    sock = _duplicate(fd)
    if sock is None:
        yield None
        return
    with sock:
        tcp = sock.type == socket.SOCK_STREAM and sock.family in (
            socket.AF_INET,
            socket.AF_INET6,
        )
        yield sock if tcp else None


def _duplicate(fd: int) -> socket.socket | None:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None
