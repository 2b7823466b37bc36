"""Real parts on loopback: the sandbox as a real HTTP server, the gateway's webhook on real HTTPS
with a test CA, real gRPC channels. The fixtures live in tests/support/fixtures.py."""

from __future__ import annotations

from tests.support.fixtures import gateway, gateways, sandbox, sandbox_options, stub, tls

__all__ = ["gateway", "gateways", "sandbox", "sandbox_options", "stub", "tls"]
