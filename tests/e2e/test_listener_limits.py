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

from dispatcher_gateway.httpserver import HttpServer, start_http

from .conftest import TlsFiles

HANDSHAKE_TIMEOUT = 0.5
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
        tls_handshake_timeout=HANDSHAKE_TIMEOUT,
    )
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
