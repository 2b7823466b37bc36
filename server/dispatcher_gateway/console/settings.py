"""The console's settings (config.py reads them from GATEWAY_CONSOLE_*)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsoleSettings:
    addr: str | None = None
    """Where the console listens; None: off. In a pod, a loopback address keeps it to
    `kubectl port-forward`."""
    operators_file: str | None = None
    auth: bool = True
    """False lets every visitor act as 'sandbox': only on a loopback address."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
