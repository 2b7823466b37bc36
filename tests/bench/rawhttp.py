"""A minimal HTTP/1.1 keep-alive client for the webhook load: httpx costs several times more CPU
per request than the servers it would measure, and a generator that saturates first measures
itself (B6)."""

from __future__ import annotations

import asyncio
import contextlib


class RawConnection:
    """One keep-alive connection, one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """Send one POST; the status code, once the whole answer is read."""
        return (await self.post_head(path, body, headers))[0]

    async def post_head(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """Send one POST; the status code and the answer's head, once the whole answer is read."""
        assert self._reader is not None
        assert self._writer is not None
        lines = [
            f"POST {path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            f"content-length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if length:
            await self._reader.readexactly(length)
        return status, head

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
