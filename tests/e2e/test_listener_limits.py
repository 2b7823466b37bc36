"""The HTTP listeners against clients that misbehave on purpose, over real sockets on loopback:
TLS that never completes or offers weak suites, headers too large, headers and bodies sent too
slowly. What bad input gets at the HTTP level, below the webhook app."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dispatcher_gateway.httplimits import MAX_HEADER_BYTES, Limits
from dispatcher_gateway.httpserver import HttpServer, start_http
from tests.support.loopback import TlsFiles

HANDSHAKE_TIMEOUT = 0.5
HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
TRICKLE = 0.1
"""Seconds between the bytes of a slow client: the whole request would take it far longer than
any timeout here."""
CLOSE_WAIT = 10.0
"""Seconds a test waits for the server to close a connection: far beyond every limit here, so
that reaching it means the server never closed it."""
CBC_SUITES = ":".join(
    [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "AES128-SHA",
        "AES256-SHA",
    ]
)


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


APP = Starlette(routes=[Route("/", echo, methods=["GET", "POST"])])


@pytest.fixture
async def https_server(tls: TlsFiles) -> AsyncIterator[HttpServer]:
    server = await start_http(
        APP,
        "127.0.0.1",
        0,
        certfile=tls.cert,
        keyfile=tls.key,
        limits=Limits(tls_handshake_timeout=HANDSHAKE_TIMEOUT),
    )
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    limits = Limits(header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT)
    server = await start_http(APP, "127.0.0.1", 0, limits=limits)
    try:
        yield server
    finally:
        await server.stop()


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tls.ca)


async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = b""
    async with asyncio.timeout(CLOSE_WAIT):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received, loop.time() - started


# TLS


async def test_a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout(
    https_server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection(https_server.host, https_server.port)

    received, elapsed = await until_closed(reader)

    assert received == b""
    assert elapsed >= HANDSHAKE_TIMEOUT * 0.9
    writer.close()


async def test_a_handshake_left_half_way_is_closed_after_the_handshake_timeout(
    https_server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection(https_server.host, https_server.port)
    writer.write(b"\x16\x03\x01\x02\x00")  # a handshake record announcing 512 bytes, then nothing

    _, elapsed = await until_closed(reader)

    assert elapsed >= HANDSHAKE_TIMEOUT * 0.9
    writer.close()


async def test_a_client_offering_only_cbc_suites_is_refused(
    https_server: HttpServer, tls: TlsFiles
) -> None:
    context = client_context(tls)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CBC_SUITES)

    # The server aborts the handshake: the client sees its alert, or only the reset.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection(https_server.host, https_server.port, ssl=context)


async def test_a_client_offering_only_tls_1_1_is_refused(
    https_server: HttpServer, tls: TlsFiles
) -> None:
    context = client_context(tls)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings(category=DeprecationWarning, action="ignore"):
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection(https_server.host, https_server.port, ssl=context)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_clients_get_an_aead_suite(
    https_server: HttpServer, tls: TlsFiles, version: ssl.TLSVersion
) -> None:
    context = client_context(tls)
    context.minimum_version = context.maximum_version = version

    reader, writer = await asyncio.open_connection(
        https_server.host, https_server.port, ssl=context
    )
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    answer, _ = await until_closed(reader)

    assert answer.startswith(b"HTTP/1.1 200")
    name, protocol, _ = writer.get_extra_info("cipher")
    assert protocol == ("TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    assert "GCM" in name or "CHACHA20" in name
    writer.close()


# Headers and bodies


def request_head(*headers: str, method: str = "GET", length: int | None = None) -> bytes:
    lines = [f"{method} / HTTP/1.1", "host: 127.0.0.1", *headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(server: HttpServer, request: bytes) -> bytes:
    """Send a request whole; everything answered until the server closes the connection."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    answer, _ = await until_closed(reader)
    writer.close()
    return answer


async def trickle(server: HttpServer, start: bytes, then: bytes) -> tuple[bytes, float, int]:
    """Send `start` at once, then `then` one byte every TRICKLE seconds until the server closes
    the connection. Returns its answer, the seconds it took to close, and the bytes of `then`
    sent by then."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(start)
    closed = asyncio.create_task(until_closed(reader))
    sent = 0
    for byte in then:
        done, _ = await asyncio.wait({closed}, timeout=TRICKLE)
        if done:
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
    answer, elapsed = await closed
    writer.close()
    return answer, elapsed, sent


async def test_headers_sent_byte_by_byte_slower_than_the_timeout_are_cut_off_with_408(
    http_server: HttpServer,
) -> None:
    slow_header = b"x-slow: " + b"a" * 200 + b"\r\n\r\n"

    answer, elapsed, sent = await trickle(http_server, b"GET / HTTP/1.1\r\n", slow_header)

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'{"error": "request_timeout"}' in answer
    assert sent < len(slow_header)
    assert elapsed >= HEADER_TIMEOUT * 0.9


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    http_server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection(http_server.host, http_server.port)

    answer, elapsed = await until_closed(reader)

    assert answer == b""
    assert elapsed >= HEADER_TIMEOUT * 0.9
    writer.close()


async def test_a_body_sent_slower_than_the_timeout_is_cut_off(http_server: HttpServer) -> None:
    body = b"x" * 200

    answer, elapsed, sent = await trickle(
        http_server, request_head(method="POST", length=len(body)), body
    )

    # Nothing to answer: the app is part-way through reading the request when it is cut off.
    assert answer == b""
    assert sent < len(body)
    assert elapsed >= BODY_TIMEOUT * 0.9


async def test_a_kept_alive_connection_idle_longer_than_the_header_timeout_still_serves(
    http_server: HttpServer,
) -> None:
    """The header deadline starts at a request's first byte, not at the end of the last one
    (idle connections are uvicorn's keep-alive timeout's, 5 s)."""
    reader, writer = await asyncio.open_connection(http_server.host, http_server.port)
    answers = []
    for _ in range(2):
        writer.write(request_head())
        answers.append(await reader.readuntil(b"}"))
        await asyncio.sleep(HEADER_TIMEOUT * 2)

    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    writer.close()


@pytest.mark.parametrize(
    ("shape", "size"),
    [("one-header", 64 * 1024), ("many-headers", 64 * 1024), ("one-header", 1024 * 1024)],
    ids=["one-64KiB-header", "64KiB-of-headers", "one-1MiB-header"],
)
async def test_headers_of_64_kib_and_more_are_431(
    http_server: HttpServer, shape: str, size: int
) -> None:
    """Refused part-way through the headers; the server still reads (and drops) what follows
    for a moment, so that the client reads the answer rather than a reset."""
    if shape == "one-header":
        headers = ["x-big: " + "a" * size]
    else:
        headers = [f"x-h{i}: " + "a" * 100 for i in range(size // 100)]

    answer = await exchange(http_server, request_head(*headers, "connection: close"))

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'{"error": "request_header_fields_too_large"}' in answer


def head_of(size: int, *headers: str, method: str = "GET") -> bytes:
    """A request's head of exactly `size` bytes (padded with one header)."""
    bare = len(request_head(*headers, "x-pad: ", method=method))
    return request_head(*headers, "x-pad: " + "a" * (size - bare), method=method)


async def test_a_head_of_exactly_the_limit_is_served(http_server: HttpServer) -> None:
    head = head_of(MAX_HEADER_BYTES, "connection: close")
    assert len(head) == MAX_HEADER_BYTES

    answer = await exchange(http_server, head)

    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_head_one_byte_over_the_limit_received_at_once_is_431_the_app_never_called(
    http_server: HttpServer,
) -> None:
    """Received in one piece, the headers are complete before the bytes received could be
    counted against the limit: their parsed size refuses them."""
    body = b'{"event": "x"}'
    head = head_of(
        MAX_HEADER_BYTES + 1, "connection: close", f"content-length: {len(body)}", method="POST"
    )
    assert len(head) == MAX_HEADER_BYTES + 1

    answer = await exchange(http_server, head + body)

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"bytes" not in answer
