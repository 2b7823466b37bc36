from pathlib import Path

import pytest

from dispatcher_gateway.config import ConfigError, Settings
from dispatcher_gateway.core.model import Service

GOOD = {
    "DISPATCHER_BASE_URL": "https://api.docs-dispatcher.io",
    "DISPATCHER_EMAIL": "ops@example.com",
    "DISPATCHER_PASSWORD": "hunter2-not-logged",
    "DISPATCHER_WEBHOOK_SECRET": "whsec-one-0123456 whsec-two-0123456",
    "GATEWAY_PUBLIC_URL": "https://gateway.example.com",
    # Who may call, and over what: tests/unit/test_config_grpc.py.
    "GATEWAY_GRPC_PLAINTEXT": "true",
    "GATEWAY_ALLOW_ANONYMOUS": "true",
}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.problems


def test_good_environment() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.webhook_secrets == ("whsec-one-0123456", "whsec-two-0123456")
    assert settings.grpc_addr == "0.0.0.0:50051"
    assert settings.upstream_rate.limit == 100


def test_secrets_are_not_in_the_repr() -> None:
    text = repr(Settings.from_env(GOOD))
    assert "hunter2" not in text
    assert "whsec" not in text


def test_every_missing_value_is_one_line() -> None:
    lines = problems({})
    # The five required values, gRPC on 0.0.0.0 without TLS, and no way to authenticate.
    assert len(lines) == 7
    assert any(line.startswith("DISPATCHER_PASSWORD: required") for line in lines)


def test_http_upstream_only_on_loopback() -> None:
    assert Settings.from_env({**GOOD, "DISPATCHER_BASE_URL": "http://127.0.0.1:8080"})
    lines = problems({**GOOD, "DISPATCHER_BASE_URL": "http://dispatcher.internal"})
    assert lines == [
        "DISPATCHER_BASE_URL: must be https (http only on a loopback host), got http scheme"
    ]


def test_public_url_must_be_https() -> None:
    assert problems({**GOOD, "GATEWAY_PUBLIC_URL": "http://127.0.0.1:8443"}) == [
        "GATEWAY_PUBLIC_URL: must be https, got http scheme"
    ]


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("from-a-file\n")
    env = {k: v for k, v in GOOD.items() if k != "DISPATCHER_PASSWORD"}
    settings = Settings.from_env({**env, "DISPATCHER_PASSWORD_FILE": str(secret_file)})
    assert settings.dispatcher_password == "from-a-file"


def test_unreadable_secret_file_is_named_not_shown(tmp_path: Path) -> None:
    env = {k: v for k, v in GOOD.items() if k != "DISPATCHER_PASSWORD"}
    lines = problems({**env, "DISPATCHER_PASSWORD_FILE": str(tmp_path / "missing")})
    assert len(lines) == 1
    assert lines[0].startswith("DISPATCHER_PASSWORD_FILE: cannot read")


def test_both_value_and_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").write_text("x")
    lines = problems({**GOOD, "DISPATCHER_PASSWORD_FILE": str(tmp_path / "p")})
    assert lines == [
        "DISPATCHER_PASSWORD: set both DISPATCHER_PASSWORD and DISPATCHER_PASSWORD_FILE; choose one"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_GRPC_ADDR", "nonsense"),
        ("GATEWAY_WEBHOOK_ADDR", "0.0.0.0:99999"),
        ("GATEWAY_UPSTREAM_RATE", "lots"),
        ("GATEWAY_MAX_STREAM_AGE", "-5"),
        ("GATEWAY_TLS_CERT_FILE", "/nonexistent.pem"),
        ("GATEWAY_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_is_one_line_naming_it(name: str, value: str) -> None:
    lines = problems({**GOOD, name: value})
    assert lines
    assert all(line.startswith(name) for line in lines)


def test_tls_cert_without_key_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    assert problems({**GOOD, "GATEWAY_TLS_CERT_FILE": str(cert)}) == [
        "GATEWAY_TLS_CERT_FILE: set together with GATEWAY_TLS_KEY_FILE, or neither"
    ]


def test_callbacks_default_to_esign_and_postal_from_their_providers() -> None:
    callbacks = Settings.from_env(GOOD).callbacks
    assert {s.value for s in callbacks.services} == {"esign", "postal"}
    assert callbacks.providers == {"universign", "signaturit", "mysendingbox"}
    assert callbacks.deadlines[Service.ESIGN] == 20 * 86400


def test_callback_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            **GOOD,
            "GATEWAY_CALLBACK_SERVICES": "esign, postal,email",
            "GATEWAY_CALLBACK_PROVIDERS": "Universign,sendgrid",
            "GATEWAY_CALLBACK_DEADLINES": "esign=14d,email=12h,postal=90",
            "GATEWAY_SYNC_CONCURRENCY": "20",
            "GATEWAY_SYNC_TIMEOUT": "60",
        }
    )
    callbacks = settings.callbacks
    assert {s.value for s in callbacks.services} == {"esign", "postal", "email"}
    assert callbacks.providers == {"universign", "sendgrid"}
    assert callbacks.deadlines == {
        Service.ESIGN: 14 * 86400,
        Service.EMAIL: 12 * 3600,
        Service.POSTAL: 90,
    }
    assert (settings.sync_concurrency, settings.sync_timeout) == (20, 60.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_CALLBACK_SERVICES", "esign,fax", "unknown service 'fax'"),
        ("GATEWAY_CALLBACK_DEADLINES", "esign", "expected SERVICE=DURATION"),
        ("GATEWAY_CALLBACK_DEADLINES", "esign=soon", "expected a duration"),
        ("GATEWAY_CALLBACK_DEADLINES", "esign=-1d", "must be a positive duration"),
        ("GATEWAY_CALLBACK_DEADLINES", "esign=40d", "must be shorter than"),
        ("GATEWAY_SYNC_CONCURRENCY", "0", "positive whole number"),
    ],
)
def test_bad_callback_settings_are_one_line_each(name: str, value: str, message: str) -> None:
    [line] = problems({**GOOD, name: value})
    assert line.startswith(f"{name}: ")
    assert message in line


def test_the_schedule_horizon_stays_within_the_retention() -> None:
    assert Settings.from_env(GOOD).schedule.horizon == 28 * 86400
    short = {**GOOD, "GATEWAY_EVENT_RETENTION": str(25 * 86400)}
    # Not set: what fits (a day for the give-up age, a day to spare).
    assert Settings.from_env(short).schedule.horizon == 23 * 86400
    [line] = problems({**short, "GATEWAY_SCHEDULE_HORIZON": str(24 * 86400)})
    assert line.startswith("GATEWAY_SCHEDULE_HORIZON: ")
    assert "must be shorter than GATEWAY_EVENT_RETENTION" in line
    assert Settings.from_env({**GOOD, "GATEWAY_SCHEDULE_SKEW": "2"}).schedule.skew == 2.0
    assert Settings.from_env({**GOOD, "GATEWAY_BATCH_MAX": "10"}).batch_max == 10
    assert problems({**GOOD, "GATEWAY_BATCH_MAX": "0"})[0].startswith("GATEWAY_BATCH_MAX: ")


def test_webhook_timestamps_are_required_unless_switched_off() -> None:
    assert Settings.from_env(GOOD).webhook_require_timestamp is True
    off = {**GOOD, "GATEWAY_WEBHOOK_REQUIRE_TIMESTAMP": "false"}
    assert Settings.from_env(off).webhook_require_timestamp is False
    assert problems({**GOOD, "GATEWAY_WEBHOOK_REQUIRE_TIMESTAMP": "sometimes"}) == [
        "GATEWAY_WEBHOOK_REQUIRE_TIMESTAMP: true or false, got 'sometimes'"
    ]


@pytest.mark.parametrize("secrets", ["short", "long-enough-secret-1 short"])
def test_a_webhook_secret_shorter_than_16_characters_is_one_line(secrets: str) -> None:
    assert problems({**GOOD, "DISPATCHER_WEBHOOK_SECRET": secrets}) == [
        "DISPATCHER_WEBHOOK_SECRET: each secret must be at least 16 characters"
    ]
    assert Settings.from_env({**GOOD, "DISPATCHER_WEBHOOK_SECRET": "x" * 16})


def test_dispatcher_email_from_file(tmp_path: Path) -> None:
    (tmp_path / "email").write_text("ops@example.com\n")
    env = {k: v for k, v in GOOD.items() if k != "DISPATCHER_EMAIL"}
    settings = Settings.from_env({**env, "DISPATCHER_EMAIL_FILE": str(tmp_path / "email")})
    assert settings.dispatcher_email == "ops@example.com"


def test_nats_ca_and_token_from_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("a CA\n")
    (tmp_path / "token").write_text("nats-token-not-logged\n")
    settings = Settings.from_env(
        {
            **GOOD,
            "GATEWAY_NATS_CA_FILE": str(tmp_path / "ca.pem"),
            "GATEWAY_NATS_TOKEN_FILE": str(tmp_path / "token"),
        }
    )
    assert settings.nats_ca_file == str(tmp_path / "ca.pem")
    assert settings.nats_token == "nats-token-not-logged"
    assert "nats-token-not-logged" not in repr(settings)
    assert problems({**GOOD, "GATEWAY_NATS_CA_FILE": str(tmp_path / "missing.pem")}) == [
        f"GATEWAY_NATS_CA_FILE: no such file: {str(tmp_path / 'missing.pem')!r}"
    ]


def test_the_json_face_is_off_unless_given_an_address() -> None:
    assert Settings.from_env(GOOD).http_addr is None
    settings = Settings.from_env({**GOOD, "GATEWAY_HTTP_ADDR": "127.0.0.1:8080"})
    assert settings.http_addr == "127.0.0.1:8080"


def test_the_json_face_without_tls_only_on_loopback_or_behind_a_proxy() -> None:
    reachable = {**GOOD, "GATEWAY_HTTP_ADDR": "0.0.0.0:8080", "GATEWAY_GRPC_PLAINTEXT": "false"}
    reachable["GATEWAY_GRPC_ADDR"] = "127.0.0.1:50051"
    [line] = problems(reachable)
    assert line.startswith("GATEWAY_HTTP_ADDR: 0.0.0.0:8080 is reachable from other hosts")
    assert Settings.from_env({**reachable, "GATEWAY_GRPC_PLAINTEXT": "true"})
    assert problems({**GOOD, "GATEWAY_HTTP_ADDR": "8080"}) == [
        "GATEWAY_HTTP_ADDR: expected HOST:PORT, got '8080'"
    ]
