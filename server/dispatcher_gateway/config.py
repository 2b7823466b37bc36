"""Settings from the environment. Every bad value is refused at start-up, one line each."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from . import config_values as values
from .config_values import FLAGS, is_loopback, split_addr
from .console.operators import Operators
from .console.settings import ConsoleSettings
from .core.breaker import FAILURE_THRESHOLD, OPEN_FOR
from .core.callbacks import DAY, DEFAULT_DEADLINE, CallbackRules
from .core.caller import UPSTREAM_TIMEOUT
from .core.hub import DEFAULT_BACKLOG
from .core.outbox import SUBMIT_TIMEOUT, SYNC_CONCURRENCY
from .core.retry import RateLimit, RetryPolicy
from .core.schedule import ScheduleRules
from .rpc.batch import BATCH_MAX
from .rpc.clients import load_clients
from .rpc.limits import ClientQuotas
from .rpc.server import GrpcLimits
from .rpc.tls import check_certificate

# Every default has one home: a setting's is its Settings field below, which takes core's own
# where core has one (the breaker's, the outbox's, the hub's); _Reader reads them from there.
# Other edges (rpc/, cli.py) take the ones they share from this module.
DEFAULT_STORE = "data/gateway.db"
ANY_HOST = "0.0.0.0"
"""Listen on every interface by default: the gateway runs in a container behind a proxy."""
GRPC_PORT = 50051
GRPC_MTLS_PORT = 50052
WEBHOOK_PORT = 8443
ADMIN_PORT = 9090
HTTP_PORT = 8080
"""The JSON face's port where it is switched on (`serve --sandbox` does, on loopback)."""
MAX_STREAM_AGE = 30 * 60.0
"""Seconds before a stream is ended (jittered), so that clients spread over new replicas."""
EVENT_RETENTION = 30 * DAY
MIN_WEBHOOK_SECRET_LENGTH = 16
"""Characters: a shorter HMAC secret could be guessed offline from one captured webhook."""
T = TypeVar("T")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Settings:
    dispatcher_base_url: str
    dispatcher_email: str
    dispatcher_password: str = field(repr=False)
    webhook_secrets: tuple[str, ...] = field(repr=False)
    public_url: str
    grpc_addr: str = f"{ANY_HOST}:{GRPC_PORT}"
    webhook_addr: str = f"{ANY_HOST}:{WEBHOOK_PORT}"
    admin_addr: str = f"{ANY_HOST}:{ADMIN_PORT}"
    http_addr: str | None = None
    """DispatchService as JSON over HTTP (rpc/json_face.py), over gRPC's TLS; None: off."""
    store: str = DEFAULT_STORE
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    dispatcher_ca_file: str | None = None
    """Trust this CA for the upstream (a private Dispatcher stand-in); default: system trust."""
    upstream_rate: RateLimit = field(default_factory=RateLimit)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    client_tokens_file: str | None = None
    allow_anonymous: bool = False
    """A call without credentials is the client `anonymous` (for local use: `serve --sandbox`)."""
    grpc_tls_cert_file: str | None = None
    grpc_tls_key_file: str | None = None
    grpc_client_ca_file: str | None = None
    """mTLS: certificate clients connect to grpc_mtls_addr with a certificate this CA signed."""
    grpc_mtls_addr: str = f"{ANY_HOST}:{GRPC_MTLS_PORT}"
    grpc_plaintext: bool = False
    """gRPC without TLS on an address other hosts reach: only behind a proxy that adds it."""
    grpc_reflection: bool = False
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)
    client_quotas: ClientQuotas = field(default_factory=ClientQuotas)
    readyz_details: bool = False
    """/readyz says why the store is unavailable to any caller, not only to loopback ones."""
    breaker_threshold: int = FAILURE_THRESHOLD
    """Consecutive upstream failures that open the circuit."""
    breaker_open_for: float = OPEN_FOR
    """Seconds the circuit stays open before a probe (doubling after failed probes)."""
    submit_timeout: float = SUBMIT_TIMEOUT
    """Seconds an async submission waits for the upstream's acceptance before it is retried."""
    callbacks: CallbackRules = field(default_factory=CallbackRules)
    """Which jobs end by webhook, and how long one is waited for."""
    sync_concurrency: int = SYNC_CONCURRENCY
    """Background sync calls (jobs that end by the upstream's answer) in flight at once."""
    sync_timeout: float = UPSTREAM_TIMEOUT
    """Seconds a background sync call waits for the upstream's answer before it is retried."""
    max_stream_age: float = MAX_STREAM_AGE
    stream_backlog: int = DEFAULT_BACKLOG
    nats_replicas: int = 1
    """R1 or R3: the replicas of every JetStream stream and bucket the gateway creates."""
    nats_ca_file: str | None = None
    """Trust this CA for NATS's TLS (`tls://` servers, or a server that requires TLS)."""
    nats_token: str | None = field(default=None, repr=False)
    """The token NATS's `authorization` asks of clients."""
    event_retention: float = EVENT_RETENTION
    """Seconds events are kept (NATS): how far back a cursor can resume."""
    schedule: ScheduleRules = field(default_factory=ScheduleRules)
    """How far in the past (skew) and ahead (horizon) a job's not_before may be."""
    batch_max: int = BATCH_MAX
    webhook_require_timestamp: bool = True
    """Refuse a webhook signed in Dispatcher's scheme without X-Webhook-Timestamp: its signature
    could be replayed for ever. Off only for a sender that cannot send one."""
    token_key: bytes | None = field(default=None, repr=False)
    """The callback token key; default: one made once and kept in the store."""
    workers: int = 1
    """Processes serving the listeners, sharing the store (cli/workers.py)."""
    log_level: str = "INFO"
    log_format: str = "text"
    """text (one line per record, for people) or json (one object per line, for a pipeline)."""
    console: ConsoleSettings = field(default_factory=lambda: ConsoleSettings())
    """The operators' console (console/); off unless GATEWAY_CONSOLE_ADDR is set."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return _Reader(env).settings()


_DEFAULTS = Settings("", "", "", (), "")
"""Every setting's default, for _Reader: a value not set is this one."""


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{name}: {text}")

    def raw(self, name: str, *, secret: bool = False, required: bool = False) -> str | None:
        value = self.env.get(name)
        file_name = f"{name}_FILE"
        if secret and self.env.get(file_name):
            if value:
                self.problem(name, f"set both {name} and {file_name}; choose one")
                return None
            try:
                value = Path(self.env[file_name]).read_text().strip()
            except OSError as exc:
                self.problem(file_name, f"cannot read {self.env[file_name]!r}: {exc.strerror}")
                return None
        if not value:
            if required:
                hint = f" (or {file_name})" if secret else ""
                self.problem(name, f"required{hint}")
            return None
        return value

    def parsed(self, name: str, parse: Callable[[str], T], default: T) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.problem(name, str(exc))
            return default

    def url(self, name: str, *, allow_loopback_http: bool) -> str:
        value = self.raw(name, required=True) or ""
        if not value:
            return ""
        parts = urlsplit(value)
        if not parts.hostname:
            self.problem(name, f"not a URL: {value!r}")
        elif parts.scheme == "http" and allow_loopback_http and is_loopback(parts.hostname):
            pass
        elif parts.scheme != "https":
            allowed = "https (http only on a loopback host)" if allow_loopback_http else "https"
            self.problem(name, f"must be {allowed}, got {parts.scheme or 'no'} scheme")
        if parts.username or parts.password:
            self.problem(name, "must not carry credentials; use DISPATCHER_EMAIL/PASSWORD")
        return value.rstrip("/")

    def flag(self, name: str, default: bool = False) -> bool:
        value = (self.raw(name) or str(default)).strip().lower()
        if value not in FLAGS:
            self.problem(name, f"true or false, got {value!r}")
            return default
        return FLAGS[value]

    def check_grpc_security(
        self,
        grpc_addr: str,
        cert: str | None,
        key: str | None,
        client_ca: str | None,
        clients: str | None,
        *,
        plaintext: bool,
        anonymous: bool,
    ) -> None:
        """The gRPC listener's TLS and who may call it, checked together."""
        if (cert is None) != (key is None):
            self.problem(
                "GATEWAY_GRPC_TLS_CERT_FILE",
                "set together with GATEWAY_GRPC_TLS_KEY_FILE, or neither",
            )
        elif cert is not None and key is not None and Path(cert).is_file() and Path(key).is_file():
            try:
                ca = client_ca if client_ca is not None and Path(client_ca).is_file() else None
                check_certificate(cert, key, ca)
            except ValueError as exc:
                self.problem("GATEWAY_GRPC_TLS_CERT_FILE", str(exc))
        if client_ca is not None and cert is None:
            self.problem(
                "GATEWAY_GRPC_CLIENT_CA_FILE",
                "mTLS needs GATEWAY_GRPC_TLS_CERT_FILE and GATEWAY_GRPC_TLS_KEY_FILE",
            )
        if plaintext and cert is not None:
            self.problem("GATEWAY_GRPC_PLAINTEXT", "set, and so is GATEWAY_GRPC_TLS_CERT_FILE")
        host = grpc_addr.rpartition(":")[0].strip("[]")
        if cert is None and not plaintext and not is_loopback(host):
            self.problem(
                "GATEWAY_GRPC_ADDR",
                f"{grpc_addr} is reachable from other hosts, and gRPC has no TLS: set "
                "GATEWAY_GRPC_TLS_CERT_FILE and GATEWAY_GRPC_TLS_KEY_FILE, or "
                "GATEWAY_GRPC_PLAINTEXT=true if a proxy in front of it terminates TLS",
            )
        if clients is not None and Path(clients).is_file():
            try:
                load_clients(clients)
            except ValueError as exc:
                self.problem("GATEWAY_CLIENT_TOKENS_FILE", f"{clients}: {exc}")
        anonymous_refused = any(p.startswith("GATEWAY_ALLOW_ANONYMOUS:") for p in self.problems)
        if clients is None and client_ca is None and not anonymous and not anonymous_refused:
            self.problem(
                "GATEWAY_CLIENT_TOKENS_FILE",
                "no caller could authenticate: set GATEWAY_CLIENT_TOKENS_FILE (bearer tokens), "
                "GATEWAY_GRPC_CLIENT_CA_FILE (client certificates), or "
                "GATEWAY_ALLOW_ANONYMOUS=true (every caller is 'anonymous': for local use only)",
            )

    def file(self, name: str) -> str | None:
        value = self.raw(name)
        if value is not None and not Path(value).is_file():
            self.problem(name, f"no such file: {value!r}")
        return value

    def addr(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        try:
            split_addr(value)
        except ValueError as exc:
            self.problem(name, str(exc))
        return value

    def seconds(self, name: str, default: float) -> float:
        def parse(text: str) -> float:
            value = float(text)
            if value <= 0:
                raise ValueError(f"must be a positive number of seconds, got {text!r}")
            return value

        return self.parsed(name, parse, default)

    def callbacks(self) -> CallbackRules:
        default = _DEFAULTS.callbacks
        services = self.parsed("GATEWAY_CALLBACK_SERVICES", values.services, default.services)
        deadlines = {
            **default.deadlines,
            **self.parsed("GATEWAY_CALLBACK_DEADLINES", values.deadlines, {}),
        }
        try:  # a bad value is reported where it is read
            retention = float(self.env.get("GATEWAY_EVENT_RETENTION") or _DEFAULTS.event_retention)
        except ValueError:
            retention = float("inf")
        for service in sorted(services):
            deadline = deadlines.get(service, DEFAULT_DEADLINE)
            if deadline >= retention:
                self.problem(
                    "GATEWAY_CALLBACK_DEADLINES",
                    f"{service}'s deadline ({deadline:g} s) must be shorter than "
                    f"GATEWAY_EVENT_RETENTION ({retention:g} s): a job must be kept until it ends",
                )
        return CallbackRules(
            services=services,
            providers=self.parsed("GATEWAY_CALLBACK_PROVIDERS", values.names, default.providers),
            deadlines=deadlines,
        )

    def console(self) -> ConsoleSettings:
        addr = self.raw("GATEWAY_CONSOLE_ADDR")
        operators = self.file("GATEWAY_CONSOLE_OPERATORS_FILE")
        auth = self.flag("GATEWAY_CONSOLE_AUTH", default=True)
        cert = self.file("GATEWAY_CONSOLE_TLS_CERT_FILE")
        key = self.file("GATEWAY_CONSOLE_TLS_KEY_FILE")
        if (cert is None) != (key is None):
            self.problem(
                "GATEWAY_CONSOLE_TLS_CERT_FILE",
                "set together with GATEWAY_CONSOLE_TLS_KEY_FILE, or neither",
            )
        if addr is None:
            return ConsoleSettings()
        addr = self.addr("GATEWAY_CONSOLE_ADDR", addr)
        host = addr.rpartition(":")[0].strip("[]")
        if not auth and not is_loopback(host):
            self.problem(
                "GATEWAY_CONSOLE_AUTH",
                f"false, and the console ({addr}) is reachable from other hosts: "
                "authentication may be off on a loopback address only (the sandbox)",
            )
        if auth and operators is None:
            self.problem(
                "GATEWAY_CONSOLE_OPERATORS_FILE",
                "the console needs its operators (or GATEWAY_CONSOLE_AUTH=false on loopback)",
            )
        elif operators is not None and Path(operators).is_file():
            try:
                Operators.load(operators)
            except ValueError as exc:
                self.problem("GATEWAY_CONSOLE_OPERATORS_FILE", f"{operators}: {exc}")
        return ConsoleSettings(addr, operators if auth else None, auth, cert, key)

    def schedule(self, retry: RetryPolicy, retention: float) -> ScheduleRules:
        """A scheduled job must be kept until it is sent (and retried): its horizon, with the
        give-up age, within the retention. Not set, the horizon is the default or what fits."""
        default = _DEFAULTS.schedule
        skew = self.seconds("GATEWAY_SCHEDULE_SKEW", default.skew)
        fits = max(0.0, min(default.horizon, retention - retry.give_up_after - DAY))
        rules = ScheduleRules(skew, self.seconds("GATEWAY_SCHEDULE_HORIZON", fits))
        if rules.horizon + retry.give_up_after >= retention:
            self.problem(
                "GATEWAY_SCHEDULE_HORIZON",
                f"{rules.horizon:g} s, with GATEWAY_GIVE_UP_AFTER ({retry.give_up_after:g} s), "
                f"must be shorter than GATEWAY_EVENT_RETENTION ({retention:g} s): a scheduled "
                "job must be kept until it is sent",
            )
        return rules

    def settings(self) -> Settings:
        base_url = self.url("DISPATCHER_BASE_URL", allow_loopback_http=True)
        email = self.raw("DISPATCHER_EMAIL", secret=True, required=True) or ""
        password = self.raw("DISPATCHER_PASSWORD", secret=True, required=True) or ""
        secrets = self.raw("DISPATCHER_WEBHOOK_SECRET", secret=True, required=True) or ""
        if any(len(secret) < MIN_WEBHOOK_SECRET_LENGTH for secret in secrets.split()):
            self.problem(
                "DISPATCHER_WEBHOOK_SECRET",
                f"each secret must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters",
            )
        public_url = self.url("GATEWAY_PUBLIC_URL", allow_loopback_http=False)
        cert = self.file("GATEWAY_TLS_CERT_FILE")
        key = self.file("GATEWAY_TLS_KEY_FILE")
        if (cert is None) != (key is None):
            self.problem(
                "GATEWAY_TLS_CERT_FILE", "set together with GATEWAY_TLS_KEY_FILE, or neither"
            )
        token_key = self.raw("GATEWAY_TOKEN_KEY", secret=True)
        if token_key is not None and len(token_key) < 32:
            self.problem("GATEWAY_TOKEN_KEY", "must be at least 32 characters")
        level = (self.raw("GATEWAY_LOG_LEVEL") or _DEFAULTS.log_level).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            self.problem("GATEWAY_LOG_LEVEL", f"one of DEBUG, INFO, WARNING, ERROR; got {level!r}")
        log_format = (self.raw("GATEWAY_LOG_FORMAT") or _DEFAULTS.log_format).lower()
        if log_format not in ("text", "json"):
            self.problem("GATEWAY_LOG_FORMAT", f"text or json; got {log_format!r}")

        grpc_addr = self.addr("GATEWAY_GRPC_ADDR", _DEFAULTS.grpc_addr)
        grpc_cert = self.file("GATEWAY_GRPC_TLS_CERT_FILE")
        grpc_key = self.file("GATEWAY_GRPC_TLS_KEY_FILE")
        client_ca = self.file("GATEWAY_GRPC_CLIENT_CA_FILE")
        clients = self.file("GATEWAY_CLIENT_TOKENS_FILE")
        plaintext = self.flag("GATEWAY_GRPC_PLAINTEXT")
        anonymous = self.flag("GATEWAY_ALLOW_ANONYMOUS")
        self.check_grpc_security(
            grpc_addr,
            grpc_cert,
            grpc_key,
            client_ca,
            clients,
            plaintext=plaintext,
            anonymous=anonymous,
        )

        http_addr = self.raw("GATEWAY_HTTP_ADDR")
        if http_addr is not None:
            http_addr = self.addr("GATEWAY_HTTP_ADDR", http_addr)
            http_host = http_addr.rpartition(":")[0].strip("[]")
            if grpc_cert is None and not plaintext and not is_loopback(http_host):
                self.problem(
                    "GATEWAY_HTTP_ADDR",
                    f"{http_addr} is reachable from other hosts, and it has no TLS (it serves "
                    "gRPC's certificate): set GATEWAY_GRPC_TLS_CERT_FILE and "
                    "GATEWAY_GRPC_TLS_KEY_FILE, or GATEWAY_GRPC_PLAINTEXT=true if a proxy in "
                    "front of it terminates TLS",
                )

        def positive_int(text: str) -> int:
            value = int(text)
            if value <= 0:
                raise ValueError(f"must be a positive whole number, got {text!r}")
            return value

        retry = RetryPolicy(
            base=self.seconds("GATEWAY_RETRY_BASE", _DEFAULTS.retry.base),
            cap=self.seconds("GATEWAY_RETRY_MAX_DELAY", _DEFAULTS.retry.cap),
            give_up_after=self.seconds("GATEWAY_GIVE_UP_AFTER", _DEFAULTS.retry.give_up_after),
        )
        retention = self.seconds("GATEWAY_EVENT_RETENTION", _DEFAULTS.event_retention)
        settings = Settings(
            dispatcher_base_url=base_url,
            dispatcher_email=email,
            dispatcher_password=password,
            # Two (or more) secrets, separated by white space, while one is being rotated.
            webhook_secrets=tuple(secrets.split()),
            public_url=public_url,
            grpc_addr=grpc_addr,
            webhook_addr=self.addr("GATEWAY_WEBHOOK_ADDR", _DEFAULTS.webhook_addr),
            admin_addr=self.addr("GATEWAY_ADMIN_ADDR", _DEFAULTS.admin_addr),
            http_addr=http_addr,
            store=self.raw("GATEWAY_STORE") or _DEFAULTS.store,
            tls_cert_file=cert,
            tls_key_file=key,
            dispatcher_ca_file=self.file("DISPATCHER_CA_FILE"),
            upstream_rate=self.parsed(
                "GATEWAY_UPSTREAM_RATE", RateLimit.parse, _DEFAULTS.upstream_rate
            ),
            retry=retry,
            client_tokens_file=clients,
            allow_anonymous=anonymous,
            grpc_tls_cert_file=grpc_cert,
            grpc_tls_key_file=grpc_key,
            grpc_client_ca_file=client_ca,
            grpc_mtls_addr=self.addr("GATEWAY_GRPC_MTLS_ADDR", _DEFAULTS.grpc_mtls_addr),
            grpc_plaintext=plaintext,
            grpc_reflection=self.flag("GATEWAY_GRPC_REFLECTION"),
            grpc_limits=GrpcLimits(
                min_ping_interval=self.seconds(
                    "GATEWAY_GRPC_MIN_PING_INTERVAL", _DEFAULTS.grpc_limits.min_ping_interval
                ),
                permit_ping_without_calls=self.flag("GATEWAY_GRPC_PERMIT_PING_WITHOUT_CALLS"),
                max_connection_age=self.seconds(
                    "GATEWAY_GRPC_MAX_CONNECTION_AGE", _DEFAULTS.grpc_limits.max_connection_age
                ),
                max_connection_age_grace=self.seconds(
                    "GATEWAY_GRPC_MAX_CONNECTION_AGE_GRACE",
                    _DEFAULTS.grpc_limits.max_connection_age_grace,
                ),
            ),
            client_quotas=ClientQuotas(
                max_streams=self.parsed(
                    "GATEWAY_CLIENT_MAX_STREAMS", positive_int, _DEFAULTS.client_quotas.max_streams
                ),
                max_queued=self.parsed(
                    "GATEWAY_CLIENT_MAX_QUEUED", positive_int, _DEFAULTS.client_quotas.max_queued
                ),
                dispatch_rate=self.parsed(
                    "GATEWAY_CLIENT_DISPATCH_RATE",
                    RateLimit.parse,
                    _DEFAULTS.client_quotas.dispatch_rate,
                ),
            ),
            readyz_details=self.flag("GATEWAY_READYZ_DETAILS"),
            breaker_threshold=self.parsed(
                "GATEWAY_BREAKER_THRESHOLD", positive_int, _DEFAULTS.breaker_threshold
            ),
            breaker_open_for=self.seconds("GATEWAY_BREAKER_OPEN_FOR", _DEFAULTS.breaker_open_for),
            submit_timeout=self.seconds("GATEWAY_SUBMIT_TIMEOUT", _DEFAULTS.submit_timeout),
            callbacks=self.callbacks(),
            sync_concurrency=self.parsed(
                "GATEWAY_SYNC_CONCURRENCY", positive_int, _DEFAULTS.sync_concurrency
            ),
            sync_timeout=self.seconds("GATEWAY_SYNC_TIMEOUT", _DEFAULTS.sync_timeout),
            max_stream_age=self.seconds("GATEWAY_MAX_STREAM_AGE", _DEFAULTS.max_stream_age),
            stream_backlog=self.parsed(
                "GATEWAY_STREAM_BACKLOG", positive_int, _DEFAULTS.stream_backlog
            ),
            nats_replicas=self.parsed(
                "GATEWAY_NATS_REPLICAS", values.replicas, _DEFAULTS.nats_replicas
            ),
            nats_ca_file=self.file("GATEWAY_NATS_CA_FILE"),
            nats_token=self.raw("GATEWAY_NATS_TOKEN", secret=True),
            event_retention=retention,
            schedule=self.schedule(retry, retention),
            batch_max=self.parsed("GATEWAY_BATCH_MAX", positive_int, _DEFAULTS.batch_max),
            webhook_require_timestamp=self.flag(
                "GATEWAY_WEBHOOK_REQUIRE_TIMESTAMP", default=_DEFAULTS.webhook_require_timestamp
            ),
            token_key=token_key.encode() if token_key else None,
            workers=self.parsed("GATEWAY_WORKERS", positive_int, _DEFAULTS.workers),
            log_level=level,
            log_format=log_format,
            console=self.console(),
        )
        if self.problems:
            raise ConfigError(self.problems)
        return settings
