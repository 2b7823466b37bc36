"""A TCP load balancer on loopback, standing in for a Kubernetes Service or ingress: each new
connection goes to a random backend that accepts it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence

CONNECT_TIMEOUT = 1.0
CHUNK = 65536


class Balancer:
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = list(backends)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections: dict[int, int] = {}
        """Connections forwarded, by backend port."""
        self.open: dict[int, int] = {}
        """Connections forwarded and still open, by backend port."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server is not None:
            await self.server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        except asyncio.CancelledError:
            # close() ends the connections still open. A handler task that ends cancelled is
            # logged as an error by asyncio.streams (Python 3.11): end it quietly instead.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for host, port in random.sample(self.backends, len(self.backends)):
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                continue
            self.connections[port] = self.connections.get(port, 0) + 1
            self.open[port] = self.open.get(port, 0) + 1
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self.open[port] -= 1
                up_writer.close()
                with contextlib.suppress(Exception):
                    await up_writer.wait_closed()
            return


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
