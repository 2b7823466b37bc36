"""DispatcherClient over real HTTPS on loopback: it trusts the CA it is given, and only that."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dispatcher_gateway.core.errors import UpstreamError
from dispatcher_gateway.httpserver import HttpServer, start_http
from dispatcher_gateway.upstream import CODE_UNREACHABLE, DispatcherClient

EMAIL = "gateway@example.com"
PASSWORD = "tls-test-password"
TEMPLATES = [{"id": 1, "name": "invoice"}, {"id": 2, "name": "reminder"}]


@dataclass(frozen=True)
class Upstream:
    server: HttpServer
    ca_file: str


async def templates(request: Request) -> JSONResponse:
    expected = "Basic " + base64.b64encode(f"{EMAIL}:{PASSWORD}".encode()).decode()
    if request.headers.get("authorization") != expected:
        return JSONResponse({"error": "unauthorized", "message": "bad credentials"}, 401)
    return JSONResponse({"templates": TEMPLATES})


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (str(tmp_path / n) for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(ca_file)
    leaf.cert_chain_pems[0].write_to_path(cert_file)
    leaf.private_key_pem.write_to_path(key_file)
    app = Starlette(routes=[Route("/api/v1/templates", templates)])
    server = await start_http(app, "127.0.0.1", 0, certfile=cert_file, keyfile=key_file)
    try:
        yield Upstream(server, ca_file)
    finally:
        await server.stop()


async def test_the_client_verifies_the_upstream_with_the_given_ca_file(upstream: Upstream) -> None:
    assert upstream.server.url.startswith("https://127.0.0.1:")

    async with DispatcherClient(
        upstream.server.url, EMAIL, PASSWORD, verify=upstream.ca_file
    ) as client:
        assert await client.templates(timeout=10) == TEMPLATES


async def test_the_client_accepts_an_ssl_context(upstream: Upstream) -> None:
    context = ssl.create_default_context(cafile=upstream.ca_file)

    async with DispatcherClient(upstream.server.url, EMAIL, PASSWORD, verify=context) as client:
        assert await client.templates(timeout=10) == TEMPLATES


async def test_default_trust_refuses_an_unknown_ca_as_a_retryable_error(
    upstream: Upstream,
) -> None:
    async with DispatcherClient(upstream.server.url, EMAIL, PASSWORD) as client:
        with pytest.raises(UpstreamError) as info:
            await client.templates(timeout=10)

    assert info.value.retryable
    assert info.value.failure.code == CODE_UNREACHABLE
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.failure.message
    assert PASSWORD not in str(info.value)
