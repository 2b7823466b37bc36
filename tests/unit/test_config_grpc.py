"""The gRPC listener's settings: TLS and mTLS files, who may call (one of a clients file, client
certificates, or anonymous access said outright), per-client limits, keepalive and connection
age; each bad combination one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from dispatcher_gateway.config import ConfigError, Settings
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.rpc.clients import hash_token

BASE = {
    "DISPATCHER_BASE_URL": "https://api.docs-dispatcher.io",
    "DISPATCHER_EMAIL": "ops@example.com",
    "DISPATCHER_PASSWORD": "hunter2-not-logged",
    "DISPATCHER_WEBHOOK_SECRET": "whsec-one-0123456 whsec-two-0123456",
    "GATEWAY_PUBLIC_URL": "https://gateway.example.com",
}
LOCAL = {"GATEWAY_GRPC_ADDR": "127.0.0.1:50051", "GATEWAY_ALLOW_ANONYMOUS": "true"}


@dataclass(frozen=True)
class Pki:
    cert: str
    key: str
    ca: str
    other_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf, other = ca.issue_cert("gateway.example"), ca.issue_cert("other.example")
    files = Pki(*(str(folder / n) for n in ("cert.pem", "key.pem", "ca.pem", "other-key.pem")))
    leaf.cert_chain_pems[0].write_to_path(files.cert)
    leaf.private_key_pem.write_to_path(files.key)
    ca.cert_pem.write_to_path(files.ca)
    other.private_key_pem.write_to_path(files.other_key)
    return files


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.problems


def test_without_any_way_to_authenticate_start_up_is_refused() -> None:
    assert problems({**BASE, "GATEWAY_GRPC_ADDR": "127.0.0.1:50051"}) == [
        "GATEWAY_CLIENT_TOKENS_FILE: no caller could authenticate: set "
        "GATEWAY_CLIENT_TOKENS_FILE (bearer tokens), GATEWAY_GRPC_CLIENT_CA_FILE (client "
        "certificates), or GATEWAY_ALLOW_ANONYMOUS=true (every caller is 'anonymous': for local "
        "use only)"
    ]


def test_anonymous_access_is_off_unless_said() -> None:
    assert Settings.from_env({**BASE, **LOCAL}).allow_anonymous
    assert not Settings(
        dispatcher_base_url="", dispatcher_email="", dispatcher_password="", webhook_secrets=(),
        public_url="",
    ).allow_anonymous  # fmt: skip


@pytest.mark.parametrize("addr", ["127.0.0.1:50051", "[::1]:50051", "localhost:50051"])
def test_plaintext_grpc_is_fine_on_loopback(addr: str) -> None:
    settings = Settings.from_env({**BASE, **LOCAL, "GATEWAY_GRPC_ADDR": addr})
    assert settings.grpc_tls_cert_file is None


def test_plaintext_grpc_other_hosts_reach_is_refused_unless_said() -> None:
    [line] = problems({**BASE, **LOCAL, "GATEWAY_GRPC_ADDR": "0.0.0.0:50051"})
    assert line.startswith("GATEWAY_GRPC_ADDR: 0.0.0.0:50051 is reachable from other hosts")
    env = {**BASE, **LOCAL, "GATEWAY_GRPC_ADDR": "0.0.0.0:50051", "GATEWAY_GRPC_PLAINTEXT": "1"}
    assert Settings.from_env(env).grpc_plaintext


def test_tls_and_mtls_files(pki: Pki) -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "GATEWAY_GRPC_ADDR": "0.0.0.0:50051",
            "GATEWAY_GRPC_TLS_CERT_FILE": pki.cert,
            "GATEWAY_GRPC_TLS_KEY_FILE": pki.key,
            "GATEWAY_GRPC_CLIENT_CA_FILE": pki.ca,
        }
    )
    assert (settings.grpc_tls_cert_file, settings.grpc_client_ca_file) == (pki.cert, pki.ca)
    assert settings.grpc_mtls_addr == "0.0.0.0:50052"
    assert not settings.allow_anonymous


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"GATEWAY_GRPC_TLS_CERT_FILE": "cert"},
            "GATEWAY_GRPC_TLS_CERT_FILE: set together with GATEWAY_GRPC_TLS_KEY_FILE, or neither",
        ),
        (
            {"GATEWAY_GRPC_TLS_CERT_FILE": "cert", "GATEWAY_GRPC_TLS_KEY_FILE": "other_key"},
            "GATEWAY_GRPC_TLS_CERT_FILE: cannot load the certificate and key: ",
        ),
        (
            {"GATEWAY_GRPC_TLS_CERT_FILE": "key", "GATEWAY_GRPC_TLS_KEY_FILE": "key"},
            "GATEWAY_GRPC_TLS_CERT_FILE: cannot load the certificate and key: ",
        ),
        (
            {
                "GATEWAY_GRPC_TLS_CERT_FILE": "cert",
                "GATEWAY_GRPC_TLS_KEY_FILE": "key",
                "GATEWAY_GRPC_CLIENT_CA_FILE": "key",
            },
            "GATEWAY_GRPC_TLS_CERT_FILE: cannot load the client CA: ",
        ),
        (
            {"GATEWAY_GRPC_CLIENT_CA_FILE": "ca"},
            "GATEWAY_GRPC_CLIENT_CA_FILE: mTLS needs GATEWAY_GRPC_TLS_CERT_FILE and "
            "GATEWAY_GRPC_TLS_KEY_FILE",
        ),
        (
            {
                "GATEWAY_GRPC_TLS_CERT_FILE": "cert",
                "GATEWAY_GRPC_TLS_KEY_FILE": "key",
                "GATEWAY_GRPC_PLAINTEXT": "true",
            },
            "GATEWAY_GRPC_PLAINTEXT: set, and so is GATEWAY_GRPC_TLS_CERT_FILE",
        ),
        ({"GATEWAY_GRPC_PLAINTEXT": "sometimes"}, "GATEWAY_GRPC_PLAINTEXT: true or false"),
        ({"GATEWAY_ALLOW_ANONYMOUS": "si"}, "GATEWAY_ALLOW_ANONYMOUS: true or false"),
        ({"GATEWAY_GRPC_MTLS_ADDR": "here"}, "GATEWAY_GRPC_MTLS_ADDR: expected HOST:PORT"),
    ],
)
def test_a_bad_tls_setting_is_one_line(pki: Pki, changes: dict[str, str], expected: str) -> None:
    files = {"cert": pki.cert, "key": pki.key, "ca": pki.ca, "other_key": pki.other_key}
    env = {**BASE, **LOCAL, **{k: files.get(v, v) for k, v in changes.items()}}
    [line] = problems(env)
    assert line.startswith(expected)


def test_a_bad_clients_file_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "clients"
    path.write_text(f"alice {hash_token('a')}\nbob {hash_token('a')}\n")
    env = {**BASE, "GATEWAY_GRPC_ADDR": "127.0.0.1:1", "GATEWAY_CLIENT_TOKENS_FILE": str(path)}
    assert problems(env) == [
        f"GATEWAY_CLIENT_TOKENS_FILE: {path}: line 2: the token hash of 'alice' is used again"
    ]
    path.write_text(f"alice {hash_token('a')}\nbob {hash_token('b')}\n")
    assert Settings.from_env(env).client_tokens_file == str(path)


def test_limits_keepalive_and_connection_age() -> None:
    defaults = Settings.from_env({**BASE, **LOCAL})
    assert defaults.client_quotas.max_streams == 1000
    assert defaults.client_quotas.max_queued == 10_000
    assert defaults.client_quotas.dispatch_rate == RateLimit(100, 1.0)
    assert not defaults.grpc_reflection
    assert not defaults.readyz_details
    options = dict(defaults.grpc_limits.options())
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 30_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 1_800_000

    settings = Settings.from_env(
        {
            **BASE,
            **LOCAL,
            "GATEWAY_CLIENT_MAX_STREAMS": "10",
            "GATEWAY_CLIENT_MAX_QUEUED": "20",
            "GATEWAY_CLIENT_DISPATCH_RATE": "600/min",
            "GATEWAY_GRPC_MIN_PING_INTERVAL": "10",
            "GATEWAY_GRPC_PERMIT_PING_WITHOUT_CALLS": "true",
            "GATEWAY_GRPC_MAX_CONNECTION_AGE": "600",
            "GATEWAY_GRPC_MAX_CONNECTION_AGE_GRACE": "60",
            "GATEWAY_GRPC_REFLECTION": "true",
            "GATEWAY_READYZ_DETAILS": "yes",
        }
    )
    quotas = settings.client_quotas
    assert (quotas.max_streams, quotas.max_queued) == (10, 20)
    assert quotas.dispatch_rate == RateLimit(600, 60.0)
    options = dict(settings.grpc_limits.options())
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 60_000
    assert settings.grpc_reflection
    assert settings.readyz_details


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_CLIENT_MAX_STREAMS", "0"),
        ("GATEWAY_CLIENT_MAX_QUEUED", "many"),
        ("GATEWAY_CLIENT_DISPATCH_RATE", "fast"),
        ("GATEWAY_GRPC_MIN_PING_INTERVAL", "-1"),
        ("GATEWAY_GRPC_MAX_CONNECTION_AGE", "never"),
        ("GATEWAY_READYZ_DETAILS", "maybe"),
        ("GATEWAY_GRPC_REFLECTION", "on-ish"),
    ],
)
def test_a_bad_limit_is_one_line_naming_it(name: str, value: str) -> None:
    [line] = problems({**BASE, **LOCAL, name: value})
    assert line.startswith(f"{name}: ")
