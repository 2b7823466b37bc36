"""dispatcher-gateway serve | sandbox | dispatch | watch | jobs | templates | token"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc

from .config import ConfigError, Settings, is_loopback
from .rpc.clients import client_line, new_token

DEFAULT_TARGET = "127.0.0.1:50051"
TOKEN_ENV = "DISPATCHER_GATEWAY_TOKEN"  # noqa: S105 (a variable's name)
"""Where client commands find their bearer token when --token is not given (an argument is
visible to every user of the machine in the process list; the environment is not)."""
RESUME_DELAY = 1.0
"""Seconds `watch` waits before resuming a stream the server ended."""
SANDBOX_TLS_DIR = Path("data/sandbox-tls")
SANDBOX_EMAIL = "sandbox@example.com"

log = logging.getLogger("dispatcher_gateway.cli")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request is the upstream client's job, at DEBUG; httpx's own is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # uvicorn announces each of its servers starting and stopping; the gateway says it once.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


# serve


def _sandbox_tls() -> tuple[str, str, str]:
    """A local CA and a certificate for 127.0.0.1/localhost, made once under data/: the sandbox
    calls the gateway's webhook over real HTTPS and trusts this CA."""
    ca_file, cert_file, key_file = (
        SANDBOX_TLS_DIR / "ca.pem",
        SANDBOX_TLS_DIR / "webhook.pem",
        SANDBOX_TLS_DIR / "webhook-key.pem",
    )
    if not (ca_file.exists() and cert_file.exists() and key_file.exists()):
        try:
            import trustme
        except ImportError:
            sys.exit("--sandbox needs the test extras: pip install 'dispatcher-gateway[test]'")
        SANDBOX_TLS_DIR.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="dispatcher-gateway sandbox")
        leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca.cert_pem.write_to_path(str(ca_file))
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))
        leaf.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
    return str(ca_file), str(cert_file), str(key_file)


async def _serve(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    sandbox = None
    if args.sandbox:
        from .sandbox import SandboxSettings, serve_sandbox

        ca_file, cert_file, key_file = _sandbox_tls()
        password, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        sandbox_settings = SandboxSettings(
            email=SANDBOX_EMAIL,
            password=password,
            webhook_secrets=(secret,),
            callback_ca=ca_file,
            event_delay=args.sandbox_event_delay,
        )
        sandbox, sandbox_server = await serve_sandbox(sandbox_settings, "127.0.0.1", 0)
        webhook_addr = env.get("GATEWAY_WEBHOOK_ADDR", "127.0.0.1:8443")
        webhook_port = webhook_addr.rpartition(":")[2]
        defaults = {
            "DISPATCHER_BASE_URL": sandbox_server.url,
            "DISPATCHER_EMAIL": SANDBOX_EMAIL,
            "DISPATCHER_PASSWORD": password,
            "DISPATCHER_WEBHOOK_SECRET": secret,
            "GATEWAY_PUBLIC_URL": f"https://127.0.0.1:{webhook_port}",
            "GATEWAY_GRPC_ADDR": "127.0.0.1:50051",
            "GATEWAY_WEBHOOK_ADDR": webhook_addr,
            "GATEWAY_ADMIN_ADDR": "127.0.0.1:9090",
            "GATEWAY_TLS_CERT_FILE": cert_file,
            "GATEWAY_TLS_KEY_FILE": key_file,
            # For trying the gateway out on this machine: said in the banner below.
            "GATEWAY_ALLOW_ANONYMOUS": "true",
            "GATEWAY_GRPC_REFLECTION": "true",
        }
        # The sandbox's credentials are made for this run; the rest can be overridden.
        env = {**defaults, **{k: v for k, v in env.items() if not k.startswith("DISPATCHER_")}}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)

    from .app import GatewayApp

    app = GatewayApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A store that is not ready yet is waited for; a SIGTERM meanwhile ends the wait.
    starting = asyncio.create_task(app.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        if sandbox is not None:
            await sandbox.close()
            await sandbox_server.stop()
        return 0
    listeners = starting.result()
    if sandbox is not None:
        target = settings.grpc_addr.replace("0.0.0.0", "127.0.0.1")
        transport = "TLS" if settings.grpc_tls_cert_file else "plaintext"
        reflection = "reflection on" if settings.grpc_reflection else "reflection off"
        access = (
            "ANONYMOUS ACCESS ON: a caller without credentials is the client 'anonymous'"
            if settings.allow_anonymous
            else "callers must authenticate"
        )
        print(
            f"\ndispatcher-gateway is running in sandbox mode (store: {settings.store}).\n"
            f"  gRPC       {target}  (dispatcher.gateway.v1.DispatchService, {transport}, "
            f"{reflection})\n"
            f"  access     {access}\n"
            f"  webhooks   {listeners.webhook.url}/webhooks/dispatcher/{{token}}\n"
            f"  admin      {listeners.admin.url}/readyz\n"
            f"  sandbox    {sandbox_server.url}  (stats: {sandbox_server.url}/_sandbox/stats)\n\n"
            "In another terminal:\n"
            "  .venv/bin/dispatcher-gateway dispatch --service email --to ada@example.com "
            "--subject Hello --template 1 --watch\n"
            "  .venv/bin/dispatcher-gateway watch\n",
            flush=True,
        )
    await stopping
    await app.drain()
    if sandbox is not None:
        await sandbox.close()
        await sandbox_server.stop()
    return 0


async def _sandbox(args: argparse.Namespace) -> int:
    from .sandbox import SandboxSettings, serve_sandbox

    _configure_logging("INFO")
    password = os.environ.get("SANDBOX_PASSWORD") or secrets.token_urlsafe(16)
    secret = os.environ.get("SANDBOX_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
    try:
        settings = SandboxSettings(
            email=args.email,
            password=password,
            webhook_secrets=(secret,),
            callback_ca=args.callback_ca,
            sync_delay=args.sync_delay,
            sync_delay_max=args.sync_delay_max,
            time_factor=args.time_factor,
        )
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    sandbox, server = await serve_sandbox(settings, args.host, args.port)
    print(f"sandbox on {server.url} (user {args.email})", flush=True)
    if "SANDBOX_PASSWORD" not in os.environ:
        print(
            "password and webhook secret: set SANDBOX_PASSWORD / SANDBOX_WEBHOOK_SECRET to choose"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sandbox.close()
    await server.stop()
    return 0


# client commands

_SERVICES = {s.removeprefix("SERVICE_").lower(): v for s, v in pb.Service.items() if v}
_STATES = {v: s.removeprefix("JOB_STATE_").lower() for s, v in pb.JobState.items()}


def _metadata_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--metadata takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _build_request(args: argparse.Namespace) -> pb.DispatchRequest:
    if args.request:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        return json_format.Parse(text, pb.DispatchRequest())
    request = pb.DispatchRequest(
        service=_SERVICES[args.service],
        chain=[_SERVICES[s] for s in args.chain],
        mode=pb.MODE_SYNC if args.sync else pb.MODE_ASYNC,
        provider_name=args.provider,
        metadata=_metadata_pairs(args.metadata),
        idempotency_key=args.idempotency_key,
    )
    request.template.id = args.template
    request.template.data.update(json.loads(args.data))
    services = {args.service, *args.chain}
    if "email" in services:
        request.email.sender.email = args.sender
        request.email.to.extend(pb.EmailAddress(email=a) for a in args.to)
        request.email.subject = args.subject
        request.email.text = args.text
    if "sms" in services:
        request.sms.to.extend(args.to)
        request.sms.text = args.text
    if "esign" in services:
        # --to names the signers, --subject the document.
        request.esign.document_name = args.subject or "Document"
        request.esign.signers.extend(pb.Signer(email=a) for a in args.to)
    return request


def _event_line(event: pb.JobEvent) -> str:
    state = _STATES.get(event.state, "?")
    mark = "  (terminal)" if event.terminal else ""
    return f"{event.cursor:>8}  {event.job_id}  {event.type:<20} {state}{mark}"


def _print_event(event: pb.JobEvent, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(event, indent=None), flush=True)
    else:
        print(_event_line(event), flush=True)


class _Connection:
    """A client command's channel to the gateway, and the metadata its calls carry."""

    def __init__(self, args: argparse.Namespace) -> None:
        token = args.token or os.environ.get(TOKEN_ENV, "")
        if bool(args.cert) != bool(args.key):
            raise SystemExit("--cert and --key go together")
        tls = bool(args.tls or args.ca or args.cert)
        host = args.target.rpartition(":")[0].strip("[]")
        if token and not tls and not is_loopback(host):
            raise SystemExit(
                f"refusing to send a bearer token in clear to {args.target}: add --tls or --ca"
            )
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(args.ca),
                private_key=_read(args.key),
                certificate_chain=_read(args.cert),
            )
            self.channel = grpc.aio.secure_channel(args.target, credentials)
        else:
            self.channel = grpc.aio.insecure_channel(args.target)

    async def __aenter__(self) -> _Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.channel.close()

    @property
    def stub(self) -> pb_grpc.DispatchServiceAsyncStub:
        return pb_grpc.DispatchServiceStub(self.channel)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc.strerror}") from None


def _rpc_error(exc: grpc.aio.AioRpcError) -> int:
    print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


async def _dispatch(args: argparse.Namespace) -> int:
    request = _build_request(args)
    async with _Connection(args) as connection:
        stub, metadata = connection.stub, connection.metadata
        try:
            response = await stub.Dispatch(request, timeout=args.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        job = response.job
        if args.json:
            print(json_format.MessageToJson(job, indent=None), flush=True)
        else:
            print(f"job {job.job_id}: {_STATES.get(job.state, '?')}", flush=True)
        if not args.watch:
            return 0
        try:
            watched = stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata)
            async for event in watched:
                _print_event(event, args.json)
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
    return 0


async def _watch(args: argparse.Namespace) -> int:
    after = args.after
    async with _Connection(args) as connection:
        stub = connection.stub
        while True:
            request = pb.SubscribeRequest(after_cursor=after, job_ids=args.job)
            try:
                async for event in stub.Subscribe(request, metadata=connection.metadata):
                    _print_event(event, args.json)
                    after = event.cursor
            except grpc.aio.AioRpcError as exc:
                resumable = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                )
                if not resumable or args.once:
                    return _rpc_error(exc)
                print(
                    f"# stream ended ({exc.code().name}); resuming after {after!r}", file=sys.stderr
                )
                await asyncio.sleep(RESUME_DELAY)
            else:
                return 0


async def _jobs(args: argparse.Namespace) -> int:
    async with _Connection(args) as connection:
        stub, metadata = connection.stub, connection.metadata
        try:
            if args.job_id:
                request = pb.GetJobRequest(job_id=args.job_id)
                job = await stub.GetJob(request, timeout=10, metadata=metadata)
                if args.json:
                    print(json_format.MessageToJson(job, indent=None))
                else:
                    print(_job_text(job))
                return 0
            page = await stub.ListJobs(
                pb.ListJobsRequest(page_size=args.limit), timeout=10, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        for job in page.jobs:
            service = pb.Service.Name(job.service).removeprefix("SERVICE_").lower()
            print(f"{job.job_id}  {service:<9} {_STATES.get(job.state, '?'):<11} {job.last_event}")
    return 0


def _job_text(job: pb.Job) -> str:
    """A job and its upstream attempts, as an operator reads them (or sends them to support)."""
    service = "/".join(
        pb.Service.Name(s).removeprefix("SERVICE_").lower() for s in (job.service, *job.chain)
    )
    mode = pb.Mode.Name(job.mode).removeprefix("MODE_").lower()
    lines = [
        f"job        {job.job_id}",
        f"service    {service} ({mode})",
        f"state      {_STATES.get(job.state, '?')} (last event: {job.last_event or '-'})",
        f"dispatch   {job.dispatch_id or '-'}",
        f"created    {job.create_time.ToJsonString()}",
        f"updated    {job.update_time.ToJsonString()}",
    ]
    if job.HasField("error"):
        lines.append(f"error      {job.error.code}: {job.error.message}")
    lines.append(f"attempts   {len(job.attempts)}")
    for n, a in enumerate(job.attempts, 1):
        mode = pb.Mode.Name(a.mode).removeprefix("MODE_").lower()
        status = str(a.http_status) if a.http_status else "-"
        latency = a.latency.ToTimedelta().total_seconds() * 1000
        lines.append(
            f"  {n:>2}  {a.attempt_time.ToJsonString()}  {a.endpoint:<22} {mode:<5} {status:>3}"
            f"  {latency:8.1f} ms  request {a.request_id}  {a.error_code}".rstrip()
        )
    return "\n".join(lines)


async def _templates(args: argparse.Namespace) -> int:
    async with _Connection(args) as connection:
        try:
            answer = await connection.stub.ListTemplates(
                pb.ListTemplatesRequest(), timeout=30, metadata=connection.metadata
            )
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        for template in answer.templates:
            print(f"{template.id:>4}  {template.name}  ({', '.join(template.services)})")
    return 0


async def _token(args: argparse.Namespace) -> int:
    options = []
    if args.services:
        options.append(f"services={args.services}")
    if not args.sync:
        options.append("sync=false")
    if args.action == "new":
        token = new_token()
        line = client_line(args.client, token, options)
        print(
            f"token for {args.client} (give it to them; the gateway keeps only its hash):\n"
            f"  {token}\n"
            "line for GATEWAY_CLIENT_TOKENS_FILE:\n"
            f"  {line}"
        )
        return 0
    token = sys.stdin.readline().strip()
    if not token:
        print("token hash: give the token on standard input", file=sys.stderr)
        return 2
    print(client_line(args.client, token, options))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (configured from the environment)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="also run the sandbox in this process and point the gateway at it",
    )
    serve.add_argument(
        "--sandbox-event-delay",
        type=float,
        default=0.5,
        help="seconds before the sandbox sends a dispatch's first webhook (default 0.5)",
    )

    sandbox = commands.add_parser("sandbox", help="run the sandbox alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument("--email", default=SANDBOX_EMAIL)
    sandbox.add_argument("--callback-ca", help="CA file to verify the HTTPS callbacks with")
    sandbox.add_argument(
        "--sync-delay", type=float, default=0.0, help="seconds a sync answer takes (the least)"
    )
    sandbox.add_argument(
        "--sync-delay-max",
        type=float,
        help="with it, each sync answer takes a random time between --sync-delay and this",
    )
    sandbox.add_argument("--time-factor", type=float, default=1.0, help="scales webhook retries")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--target", default=DEFAULT_TARGET, help="the gateway's gRPC address")
        command.add_argument("--json", action="store_true", help="print JSON lines")
        command.add_argument("--token", default="", help=f"bearer token (better: set {TOKEN_ENV})")
        command.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
        command.add_argument("--ca", help="TLS, trusting this CA file")
        command.add_argument("--cert", help="client certificate file (mTLS), with --key")
        command.add_argument("--key", help="the client certificate's key file")
        return command

    dispatch = client("dispatch", "dispatch one request")
    dispatch.add_argument("--service", choices=sorted(_SERVICES), default="email")
    dispatch.add_argument("--chain", choices=sorted(_SERVICES), action="append", default=[])
    dispatch.add_argument("--sync", action="store_true", help="wait for the upstream's answer")
    dispatch.add_argument("--template", type=int, default=1)
    dispatch.add_argument("--data", default="{}", help="template data, a JSON object")
    dispatch.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    dispatch.add_argument("--from", dest="sender", default="noreply@example.com")
    dispatch.add_argument("--subject", default="")
    dispatch.add_argument("--text", default="")
    dispatch.add_argument("--provider", default="")
    dispatch.add_argument("--metadata", action="append", default=[], help="KEY=VALUE")
    dispatch.add_argument("--idempotency-key", default="")
    dispatch.add_argument("--request", help="a DispatchRequest as JSON, from a file or - (stdin)")
    dispatch.add_argument("--watch", action="store_true", help="follow the job to its end")
    dispatch.add_argument("--timeout", type=float, default=150.0)

    watch = client("watch", "follow your event stream, resuming by itself")
    watch.add_argument("--after", default="", help="resume after this cursor")
    watch.add_argument("--job", action="append", default=[], help="only this job (repeatable)")
    watch.add_argument("--once", action="store_true", help="do not resume when the server ends it")

    jobs = client("jobs", "list your jobs, or show one")
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--limit", type=int, default=20)

    client("templates", "list the account's templates")

    token = commands.add_parser(
        "token", help="make a client's bearer token, or hash one, for the clients file"
    )
    token.add_argument(
        "action",
        choices=["new", "hash"],
        help="new: make a random token; hash: the line for a token read from standard input",
    )
    token.add_argument("client", help="the client's name")
    token.add_argument("--services", help="only these services, such as email,sms")
    token.add_argument(
        "--no-sync", dest="sync", action="store_false", help="MODE_ASYNC only (sync=false)"
    )
    return parser


_COMMANDS: dict[str, Any] = {
    "serve": _serve,
    "sandbox": _sandbox,
    "dispatch": _dispatch,
    "watch": _watch,
    "jobs": _jobs,
    "templates": _templates,
    "token": _token,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(asyncio.run(_COMMANDS[args.command](args)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
