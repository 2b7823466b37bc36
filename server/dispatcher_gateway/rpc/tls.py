"""The gRPC listener's TLS: its certificate and key (and, for mTLS, the CA that signs client
certificates) read from files, and read again when one of them changes, at the next connection:
a renewed certificate takes effect without a restart. A new version that cannot be used (a key
that does not match its certificate, a file half written) is logged once, and connections go on
with the previous one.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import grpc

from .throttled_log import one_line

log = logging.getLogger("dispatcher_gateway.rpc")

Signature = tuple[tuple[int, int, int, int] | None, ...]


def check_certificate(cert_file: str, key_file: str, client_ca_file: str | None = None) -> None:
    """ValueError saying why these files cannot serve TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the certificate and key: {one_line(exc)}") from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the client CA: {one_line(exc)}") from None


class CertificateFiles:
    """The certificate configuration of one port, from its files, as grpc's dynamic SSL
    credentials fetch it at each new connection."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._seen = self._signature()
        self._config = self._load()

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def credentials(self) -> grpc.ServerCredentials:
        """TLS; with a client CA, every connection must present a certificate it signed (grpc's
        Python API offers no "ask, verify if given" mode: certificate clients have a port of
        their own)."""
        return grpc.dynamic_ssl_server_credentials(
            self._config,
            # grpc's type stubs say the fetcher never returns None; grpc documents None as "no
            # change".
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self.client_ca_file is not None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake: a new configuration, or None to keep the
        current one. Never raises: a handshake must not fail because a file was being
        renewed."""
        try:
            signature = self._signature()
            if signature == self._seen:
                return None
            self._seen = signature
            self._config = self._load()
        except Exception as exc:
            log.error(
                "gRPC TLS: %s changed but cannot be used (%s); keeping the previous certificate",
                ", ".join(self.files),
                one_line(exc),
            )
            return None
        log.info("gRPC TLS: certificate reloaded from %s", self.cert_file)
        return self._config

    def _signature(self) -> Signature:
        def stat(path: str) -> tuple[int, int, int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

        return tuple(stat(f) for f in self.files)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        contents = [Path(f).read_bytes() for f in self.files]
        check_certificate(*self.files)
        # What was checked must be what grpc is given: a renewal may be half-way through.
        if [Path(f).read_bytes() for f in self.files] != contents:
            raise ValueError("the files changed while being read")
        cert, key, *client_ca = contents
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=client_ca[0] if client_ca else None
        )
