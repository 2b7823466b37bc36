"""What an HTTP listener grants one client, and the uvicorn protocol that holds it to that.

uvicorn's httptools protocol takes headers of any size, and has no time limit on reading a
request's headers or body: only an idle kept-alive connection is closed (its keep-alive timeout),
so a client that sends a byte now and then (slowloris), or opens a connection and sends nothing,
holds it for ever. `LimitedProtocol` adds the limits; `httpserver` passes the TLS handshake
timeout to asyncio.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 16 * 1024
"""A request's line and headers. Dispatcher's webhooks carry a few signatures and ids; the
ingress adds forwarding headers: a few KiB in all."""
HEADER_TIMEOUT = 10.0
"""Seconds from a connection's opening, or a later request's first byte, to the end of the
request's headers."""
BODY_TIMEOUT = 15.0
"""Seconds from the end of a request's headers to the end of its body: Dispatcher stops waiting
for an answer after 15 s and retries anyway."""
TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a connection has to complete its TLS handshake."""
LINGER = 1.0
"""Seconds a refused connection is still read from, what comes dropped, before it is closed:
closed with part of a request unread, it would be reset, and a client that reads the refusal
only after sending everything would get the reset instead."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = MAX_HEADER_BYTES
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    tls_handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT


def _answer(error: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of a refusal, in the webhook app's shape."""
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return body, headers


def _raw(status: int, error: str) -> bytes:
    """A whole response that ends the connection, for a request whose headers never ended."""
    body, headers = _answer(error)
    headers.append((b"connection", b"close"))
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_TOO_LARGE = (431, "request_header_fields_too_large")
_TIMEOUT = (408, "request_timeout")


async def _headers_too_large(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a request with headers over the limit gets instead of the real one. The request
    was parsed whole, so the connection may go on to the next one."""
    status, error = _TOO_LARGE
    body, headers = _answer(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, holding each request to `limits`: headers over the size are
    answered 431, headers or a body not received in time end the connection (408 when nothing
    is in flight to be answered)."""

    limits: ClassVar[Limits] = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False
        self._in_headers = True
        self._received = 0
        """Bytes received while the current request's headers were incomplete."""
        self._header_size = 0
        """The current request's target and headers, as parsed (with their separators)."""

    @classmethod
    def holding_to(cls, limits: Limits) -> type[LimitedProtocol]:
        """The protocol class for one listener: uvicorn makes its protocols from a class."""

        class Limited(cls):  # type: ignore[valid-type,misc]
            pass

        Limited.limits = limits
        return Limited

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        # Counted as received, not as parsed: httptools holds a header until it is complete, so
        # one endless header would never reach a callback.
        if self._in_headers:
            self._received += len(data)
        super().data_received(data)
        if self._in_headers and self._received > self.limits.max_header_bytes:
            self._end(_TOO_LARGE)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_size = 0
        if not self._in_headers:  # the next request on a kept-alive connection
            self._in_headers = True
            self._received = 0
            self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.limits.body_timeout)
        # The request line's spaces, version and CRLF, and the blank line: as many bytes as
        # were received for a request written the usual way.
        size = self._header_size + len(self.parser.get_method()) + len(" HTTP/1.1\r\n\r\n") + 1
        if size <= self.limits.max_header_bytes:
            super().on_headers_complete()
            return
        # Answered through uvicorn's own request cycle, which reads (and drops) the body.
        app, self.app = self.app, _headers_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    # Deadlines

    def _arm(self, delay: float, then: Callable[[], object] | None = None) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, then or self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._end(_TIMEOUT if self._in_headers and self._received else None)

    def _end(self, answer: tuple[int, str] | None) -> None:
        """Close the connection, answering first when no response is under way."""
        if self.transport.is_closing():
            return
        self._disarm()
        answering = self.cycle is not None and not self.cycle.response_complete
        if answer is None or answering:
            self.transport.close()
            return
        self.transport.write(_raw(*answer))
        # Until the client, having read the answer, closes too; or LINGER has passed.
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER, self.transport.close)
