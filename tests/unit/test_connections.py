"""rpc/connections: a server's accepted connections found among the process's sockets, and
those of clients with nothing running closed; grpc's names for peers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from dispatcher_gateway.rpc.connections import close_idle, listable, peer_address, stop_accepting


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50001", ("127.0.0.1", 50001)),
        ("ipv6:%5B::1%5D:50001", ("::1", 50001)),
        ("ipv6:[::1]:50001", ("::1", 50001)),
        ("ipv6:%5B::ffff:127.0.0.1%5D:50001", ("127.0.0.1", 50001)),
        ("unix:/run/gateway.sock", None),
        ("ipv4:not-an-address:1", None),
        ("", None),
    ],
)
def test_peer_address(peer: str, address: tuple[str, int] | None) -> None:
    assert peer_address(peer) == address


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def connect(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return client, accepted


def test_connections_of_idle_clients_are_closed_and_busy_ones_kept(
    listener: socket.socket,
) -> None:
    assert listable()
    port = listener.getsockname()[1]
    idle_client, idle_end = connect(listener)
    busy_client, busy_end = connect(listener)
    with idle_client, idle_end, busy_client, busy_end:
        busy = {busy_client.getsockname()[:2]}
        closed, left = close_idle({port}, busy)
        assert (closed, left) == ({idle_client.getsockname()[:2]}, 1)
        # The idle client reads the end; the busy one is served still.
        idle_client.settimeout(5)
        assert idle_client.recv(1) == b""
        busy_end.sendall(b"x")
        busy_client.settimeout(5)
        assert busy_client.recv(1) == b"x"
        # The listening socket is left alone: it accepts the next client.
        with socket.create_connection(listener.getsockname()):
            late_end, _ = listener.accept()
            late_end.close()


def test_other_ports_are_left_alone(listener: socket.socket) -> None:
    client, accepted = connect(listener)
    with client, accepted:
        assert close_idle({listener.getsockname()[1] + 1}, set()) == (set(), 0)
        accepted.sendall(b"x")
        client.settimeout(5)
        assert client.recv(1) == b"x"


def test_once_it_stops_accepting_no_client_connects_and_connections_go_on(
    listener: socket.socket,
) -> None:
    client, accepted = connect(listener)
    with client, accepted:
        assert stop_accepting({listener.getsockname()[1]}) == 1
        # The handshake does not complete: nothing is there to accept.
        with (
            contextlib.suppress(OSError),
            socket.create_connection(listener.getsockname(), timeout=0.5),
        ):
            pass
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()
        accepted.sendall(b"x")
        client.settimeout(5)
        assert client.recv(1) == b"x"
