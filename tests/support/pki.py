"""Certificates for gRPC over TLS and mTLS tests, from trustme: a CA for the gateway's server
certificate and another for client certificates, written to files as a deployment has them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import trustme

SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass
class Pki:
    folder: Path
    server_ca: trustme.CA = field(default_factory=trustme.CA)
    client_ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))
        self.renew_server_certificate(self.server_ca)

    @property
    def cert_file(self) -> Path:
        return self.folder / "grpc.pem"

    @property
    def key_file(self) -> Path:
        return self.folder / "grpc-key.pem"

    @property
    def client_ca_file(self) -> Path:
        return self.folder / "client-ca.pem"

    @property
    def server_ca_file(self) -> Path:
        """The CA a client trusts the gateway by (the one that signed its certificate last)."""
        return self.folder / "server-ca.pem"

    def renew_server_certificate(self, ca: trustme.CA) -> None:
        """New server certificate and key from `ca`, each file replaced whole by a rename."""
        leaf = ca.issue_cert(*SERVER_NAMES)
        for path, blob in (
            (self.key_file, leaf.private_key_pem),
            (self.cert_file, leaf.cert_chain_pems[0]),
        ):
            fresh = path.with_suffix(".new")
            blob.write_to_path(str(fresh))
            os.replace(fresh, path)
        self.server_ca = ca
        ca.cert_pem.write_to_path(str(self.server_ca_file))

    def client_certificate(
        self, *identities: str, ca: trustme.CA | None = None, common_name: str | None = None
    ) -> tuple[bytes, bytes]:
        """(private key, certificate chain) PEM for a client certificate."""
        leaf = (ca or self.client_ca).issue_cert(*identities, common_name=common_name)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return leaf.private_key_pem.bytes(), chain

    def client_certificate_files(self, identity: str) -> tuple[Path, Path]:
        """(certificate, key) files of a new client certificate naming `identity`."""
        key, chain = self.client_certificate(identity)
        cert_file, key_file = self.folder / f"{identity}.pem", self.folder / f"{identity}-key.pem"
        cert_file.write_bytes(chain)
        key_file.write_bytes(key)
        return cert_file, key_file

    def channel(
        self, target: str, certificate: tuple[bytes, bytes] | None = None
    ) -> grpc.aio.Channel:
        """A channel over TLS trusting the gateway's CA, presenting `certificate` if given."""
        key, chain = certificate or (None, None)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.server_ca.cert_pem.bytes(),
            private_key=key,
            certificate_chain=chain,
        )
        return grpc.aio.secure_channel(target, credentials)
