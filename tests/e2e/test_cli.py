"""The command line as a user runs it: the installed `dispatcher-gateway` entry point, each
command a process of its own, against `dispatcher-gateway serve --sandbox` (what `make run`
starts) on loopback. What the README shows is what these check is printed."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dispatcher_gateway.cli import TOKEN_ENV
from dispatcher_gateway.sandbox.catalog import TEMPLATES
from tests.support.ports import free_port

ENTRY_POINT = Path(sys.executable).with_name("dispatcher-gateway")
"""The script pip installed next to this interpreter (`.venv/bin/dispatcher-gateway`)."""
START_TIMEOUT = 30.0
RUN_TIMEOUT = 30.0
JOB_ID = r"job_[0-9a-f]{32}"
EVENT_LINE = re.compile(rf"^ *(\d+)  ({JOB_ID})  (\S+) *(\S+)(  \(terminal\))?$")
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"

EMAIL_COMMAND = shlex.split(
    "dispatch --service email --to ada@example.com --subject Hello --template 1 --watch"
)
"""The README's first command, as `make run` prints it too."""
ESIGN_COMMAND = shlex.split(
    "dispatch --service esign --provider universign --to ada@example.com --to bob@example.com "
    "--subject Contract --template 3 --watch"
)
"""The README's second command."""


@dataclass
class Served:
    """A `serve --sandbox` process and what its banner said."""

    process: asyncio.subprocess.Process
    env: dict[str, str]
    banner: list[str]
    log_path: Path

    @property
    def target(self) -> str:
        return self.env["GATEWAY_GRPC_ADDR"]

    def said(self, label: str) -> str:
        """The banner's line for `label` (gRPC, access, webhooks, admin, sandbox), label off."""
        [line] = [line for line in self.banner if line.startswith(f"  {label} ")]
        return line.removeprefix(f"  {label} ").strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Ctrl-C, as in the terminal `make run` runs in."""
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), START_TIMEOUT)


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """One command to its end: (exit status, stdout, stderr)."""
    command = await asyncio.create_subprocess_exec(
        str(ENTRY_POINT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(command.communicate(), RUN_TIMEOUT)
    assert command.returncode is not None
    return command.returncode, out.decode(), err.decode()


async def serve_sandbox(folder: Path, **env: str) -> Served:
    """`dispatcher-gateway serve --sandbox` in `folder` (its store and local CA go under data/,
    as `make run` puts them in the checkout), on free loopback ports; once its banner is out."""
    env = {
        "GATEWAY_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_WEBHOOK_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        **env,
    }
    log_path = folder / "serve.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(ENTRY_POINT),
            "serve",
            "--sandbox",
            cwd=folder,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    banner: list[str] = []
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while len(banner) < 2 or banner[-2] != "In another terminal:":
                line = await process.stdout.readline()
                assert line, f"serve --sandbox exited: {log_path.read_text()}"
                banner.append(line.decode().rstrip("\n"))
            banner.append((await process.stdout.readline()).decode().rstrip("\n"))
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return Served(process, env, banner, log_path)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    served = await serve_sandbox(tmp_path)
    try:
        yield served
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()


def events(out: str) -> list[tuple[int, str, str, str, bool]]:
    """(cursor, job id, type, state, terminal) of each event line, each checked to be exactly
    the line the CLI prints for those values."""
    found = []
    for line in out.splitlines():
        match = EVENT_LINE.match(line)
        assert match, line
        cursor, job_id, kind, state, terminal = match.groups()
        mark = "  (terminal)" if terminal else ""
        assert line == f"{cursor:>8}  {job_id}  {kind:<20} {state}{mark}"
        found.append((int(cursor), job_id, kind, state, bool(terminal)))
    return found


def job_of(first_line: str) -> str:
    """The job id of `dispatch`'s first line, `job JOB_ID: STATE`."""
    match = re.fullmatch(rf"job ({JOB_ID}): queued", first_line)
    assert match, first_line
    return match.group(1)


async def sandbox_requests(served: Served, job_id: str) -> list[dict[str, object]]:
    """What the sandbox received for a job (the gateway sends its id as the idempotency key)."""
    sandbox_url = served.said("sandbox").split()[0]
    async with httpx.AsyncClient(base_url=sandbox_url) as http:
        answer = await http.get("/_sandbox/requests", params={"idempotencyKey": job_id})
    answer.raise_for_status()
    requests: list[dict[str, object]] = answer.json()["requests"]
    return requests


# serve --sandbox


async def test_serve_sandbox_says_where_everything_listens_and_stops_on_ctrl_c(
    served: Served,
) -> None:
    env = served.env
    assert served.banner[1] == (
        "dispatcher-gateway is running in sandbox mode (store: data/gateway.db)."
    )
    assert served.said("gRPC") == (
        f"{env['GATEWAY_GRPC_ADDR']}  (dispatcher.gateway.v1.DispatchService, plaintext, "
        "reflection on)"
    )
    assert served.said("access") == (
        "ANONYMOUS ACCESS ON: a caller without credentials is the client 'anonymous'"
    )
    assert served.said("webhooks") == (
        f"https://{env['GATEWAY_WEBHOOK_ADDR']}/webhooks/dispatcher/{{token}}"
    )
    assert served.said("admin") == f"http://{env['GATEWAY_ADMIN_ADDR']}/readyz"
    sandbox_url, stats = served.said("sandbox").split(maxsplit=1)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox_url)
    assert stats == f"(stats: {sandbox_url}/_sandbox/stats)"
    assert served.banner[-3:] == [
        "In another terminal:",
        "  .venv/bin/dispatcher-gateway " + " ".join(EMAIL_COMMAND),
        "  .venv/bin/dispatcher-gateway watch",
    ]
    async with httpx.AsyncClient() as http:
        ready = await http.get(served.said("admin"))
        assert (ready.status_code, ready.json()["ready"]) == (200, True)
        assert (await http.get(stats.removeprefix("(stats: ").rstrip(")"))).status_code == 200

    assert await served.stop() == 0
    assert "drained" in served.log()


async def test_serve_sandbox_keeps_its_local_ca_and_store_for_the_next_run(
    tmp_path: Path,
) -> None:
    first = await serve_sandbox(tmp_path)
    code, out, err = await cli(*EMAIL_COMMAND, "--target", first.target)
    assert code == 0, err
    job_id = job_of(out.splitlines()[0])
    assert await first.stop() == 0
    ca = (tmp_path / "data/sandbox-tls/ca.pem").read_bytes()

    again = await serve_sandbox(tmp_path)
    try:
        code, out, err = await cli("jobs", "--target", again.target)
        assert code == 0, err
        assert out == f"{job_id}  email     succeeded   dispatch_completed\n"
        assert (tmp_path / "data/sandbox-tls/ca.pem").read_bytes() == ca
    finally:
        assert await again.stop() == 0


# dispatch, jobs, templates


async def test_dispatch_watch_prints_the_job_then_each_event_to_its_end(served: Served) -> None:
    code, out, err = await cli(*EMAIL_COMMAND, "--target", served.target)

    assert (code, err) == (0, "")
    first, *rest = out.splitlines()
    job_id = job_of(first)
    seen = events("\n".join(rest))
    assert [(job, kind, state, end) for _, job, kind, state, end in seen] == [
        (job_id, "queued", "queued", False),
        (job_id, "dispatch_completed", "succeeded", True),
    ]
    cursors = [cursor for cursor, *_ in seen]
    assert cursors == sorted(set(cursors))


async def test_an_esign_job_ends_by_webhooks_and_jobs_shows_it_with_its_request(
    served: Served,
) -> None:
    code, out, err = await cli(*ESIGN_COMMAND, "--target", served.target)

    assert (code, err) == (0, "")
    first, *rest = out.splitlines()
    job_id = job_of(first)
    assert [(kind, state, end) for _, _, kind, state, end in events("\n".join(rest))] == [
        ("queued", "queued", False),
        ("submitted", "submitted", False),
        ("signer_signed", "in_progress", False),
        ("signer_signed", "in_progress", False),
        ("transaction_completed", "succeeded", True),
    ]

    code, out, err = await cli("jobs", "--target", served.target, job_id)

    assert (code, err) == (0, "")
    [sent] = await sandbox_requests(served, job_id)
    lines = out.splitlines()
    assert lines[:4] == [
        f"job        {job_id}",
        "service    esign (async)",
        "state      succeeded (last event: transaction_completed)",
        f"dispatch   {sent['dispatchId']}",
    ]
    assert re.fullmatch(rf"created    {TIMESTAMP}", lines[4]), lines[4]
    assert re.fullmatch(rf"updated    {TIMESTAMP}", lines[5]), lines[5]
    assert lines[6] == "attempts   1"
    attempt = re.fullmatch(
        rf"   1  {TIMESTAMP}  POST /api/esign {{8}}async 202 +(\d+\.\d) ms  request (\S+)",
        lines[7],
    )
    assert attempt, lines[7]
    assert attempt.group(3) == sent["requestId"]
    assert (sent["path"], sent["mode"], sent["status"]) == ("/api/esign", "async", 202)
    assert len(lines) == 8


async def test_jobs_lists_the_callers_jobs_newest_first(served: Served) -> None:
    code, out, err = await cli(*EMAIL_COMMAND, "--target", served.target)
    assert code == 0, err
    email = job_of(out.splitlines()[0])
    code, out, err = await cli(*ESIGN_COMMAND, "--target", served.target)
    assert code == 0, err
    esign = job_of(out.splitlines()[0])

    code, out, err = await cli("jobs", "--target", served.target)

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{esign}  esign     succeeded   transaction_completed",
        f"{email}  email     succeeded   dispatch_completed",
    ]
    code, out, err = await cli("jobs", "--target", served.target, "--limit", "1")
    assert (code, out.split()) == (0, [esign, "esign", "succeeded", "transaction_completed"])


async def test_templates_lists_the_accounts_templates(served: Served) -> None:
    code, out, err = await cli("templates", "--target", served.target)

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{t.id:>4}  {t.name}  ({', '.join(t.services)})" for t in TEMPLATES.values()
    ]
    assert out.splitlines()[0] == "   1  Welcome letter  (email, postal, file)"


async def test_a_refused_call_says_why_on_stderr_and_exits_1(served: Served) -> None:
    code, out, err = await cli("jobs", "--target", served.target, "job_unknown")

    assert (code, out) == (1, "")
    assert err == "error: NOT_FOUND: job 'job_unknown' not found\n"


# watch


async def read_lines(stream: asyncio.StreamReader, until: re.Pattern[str]) -> list[str]:
    """Lines of a running command's output, up to the first matching `until`."""
    lines: list[str] = []
    async with asyncio.timeout(RUN_TIMEOUT):
        while not lines or not until.search(lines[-1]):
            line = await stream.readline()
            assert line, f"the command ended; it printed {lines}"
            lines.append(line.decode().rstrip("\n"))
    return lines


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def start(*args: str) -> asyncio.subprocess.Process:
    """A command left running; started with SIGINT ignored, as a shell without job control
    starts a background command (`sh -c 'make test &'`): Ctrl-C still has to end it."""
    return await asyncio.create_subprocess_exec(
        str(ENTRY_POINT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=ignore_sigint,
    )


async def test_watch_follows_every_job_and_stops_on_ctrl_c(served: Served) -> None:
    code, out, err = await cli(*EMAIL_COMMAND, "--target", served.target)
    assert code == 0, err
    dispatched = out.splitlines()[1:]
    watch = await start("watch", "--target", served.target)
    try:
        assert watch.stdout is not None
        # What was there before it started, the same lines `dispatch --watch` printed.
        replayed = await read_lines(watch.stdout, re.compile(r"\(terminal\)$"))
        assert replayed == dispatched

        code, out, err = await cli(*ESIGN_COMMAND, "--target", served.target)
        assert code == 0, err
        live = await read_lines(watch.stdout, re.compile(r"\(terminal\)$"))
        assert live == out.splitlines()[1:]
    finally:
        watch.send_signal(signal.SIGINT)
        _, errors = await asyncio.wait_for(watch.communicate(), RUN_TIMEOUT)
    assert (watch.returncode, errors) == (130, b"")


async def test_watch_resumes_after_the_last_cursor_when_the_server_ends_its_stream(
    tmp_path: Path,
) -> None:
    served = await serve_sandbox(tmp_path, GATEWAY_MAX_STREAM_AGE="1")
    try:
        code, out, err = await cli(*EMAIL_COMMAND[:-1], "--target", served.target)
        assert code == 0, err
        first = job_of(out.strip())
        watch = await start("watch", "--target", served.target, "--job", first)
        assert watch.stdout is not None
        assert watch.stderr is not None
        try:
            printed = await read_lines(watch.stdout, re.compile("terminal"))
            before = events("\n".join(printed))
            last = before[-1][0]
            notice = await read_lines(watch.stderr, re.compile("resuming"))
            assert notice == [f"# stream ended (UNAVAILABLE); resuming after '{last}'"]
            # A second stream ended and resumed, and nothing was printed again.
            notice = await read_lines(watch.stderr, re.compile("resuming"))
            assert notice == [f"# stream ended (UNAVAILABLE); resuming after '{last}'"]
        finally:
            watch.send_signal(signal.SIGINT)
            out_after, _ = await asyncio.wait_for(watch.communicate(), RUN_TIMEOUT)
        assert (watch.returncode, out_after) == (130, b"")
        assert [job for _, job, *_ in before] == [first, first]

        # --once: the same events, then the server's word on where to resume, and exit 1.
        code, out, err = await cli("watch", "--once", "--target", served.target)
        assert (code, out.splitlines()) == (1, printed)
        assert re.fullmatch(
            r"error: UNAVAILABLE: the stream reached its maximum age; "
            rf"resume with after_cursor='{last}'\n",
            err,
        ), err
    finally:
        assert await served.stop() == 0


# The clients file


def clients_line(out: str) -> tuple[str, str]:
    """The token and the line `token new` printed."""
    lines = out.splitlines()
    assert lines[0].endswith("(give it to them; the gateway keeps only its hash):")
    assert lines[2] == "line for GATEWAY_CLIENT_TOKENS_FILE:"
    return lines[1].strip(), lines[3].strip()


def rotate(path: Path, text: str) -> None:
    """As a deployment does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    fresh.replace(path)


async def test_a_malformed_clients_file_is_refused_at_start_naming_file_and_line(
    tmp_path: Path,
) -> None:
    code, out, err = await cli("token", "new", "billing")
    assert code == 0, err
    token, line = clients_line(out)
    clients = tmp_path / "clients"
    clients.write_text(f"# who may call\n{line}\nreports {token}\n")
    env = {
        "PATH": os.environ["PATH"],
        "DISPATCHER_BASE_URL": "http://127.0.0.1:9",
        "DISPATCHER_EMAIL": "ops@example.com",
        "DISPATCHER_PASSWORD": "not-used-here",
        "DISPATCHER_WEBHOOK_SECRET": "whsec-not-used-here",
        "GATEWAY_PUBLIC_URL": "https://gateway.example",
        "GATEWAY_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_CLIENT_TOKENS_FILE": str(clients),
        "GATEWAY_LOG_LEVEL": "LOUD",
    }
    serve = await asyncio.create_subprocess_exec(
        str(ENTRY_POINT),
        "serve",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_bytes, err_bytes = await asyncio.wait_for(serve.communicate(), START_TIMEOUT)

    assert (serve.returncode, out_bytes) == (2, b"")
    lines = err_bytes.decode().splitlines()
    assert lines == [
        "config: GATEWAY_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR; got 'LOUD'",
        f"config: GATEWAY_CLIENT_TOKENS_FILE: {clients}: line 3: expected sha256:HEX, "
        "cert:IDENTITY, services=, sync= or weight= after 'reports' (plain tokens are not "
        "accepted: "
        "`dispatcher-gateway token hash` prints a token's line)",
    ]
    assert token not in err_bytes.decode()
    assert not (tmp_path / "data").exists()


async def test_a_malformed_clients_file_on_reload_leaves_the_last_good_one_in_force(
    tmp_path: Path,
) -> None:
    made = [clients_line((await cli("token", "new", name))[1]) for name in ("a", "b")]
    tokens, lines = [token for token, _ in made], [line for _, line in made]
    clients = tmp_path / "clients"
    clients.write_text(f"{lines[0]}\n")
    served = await serve_sandbox(
        tmp_path, GATEWAY_CLIENT_TOKENS_FILE=str(clients), GATEWAY_ALLOW_ANONYMOUS="false"
    )
    try:
        assert served.said("access") == "callers must authenticate"
        as_a, as_b = ({TOKEN_ENV: token} for token in tokens)
        code, out, err = await cli(*EMAIL_COMMAND, "--target", served.target, env=as_a)
        assert code == 0, err
        job_id = job_of(out.splitlines()[0])

        rotate(clients, f"{lines[0]}\n{tokens[1]}\n")
        code, out, err = await cli("jobs", "--target", served.target, env=as_a)
        assert (code, out.split()[0], err) == (0, job_id, "")
        code, out, err = await cli("jobs", "--target", served.target, env=as_b)
        assert (code, err) == (1, "error: UNAUTHENTICATED: unknown bearer token\n")
        [refusal] = [line for line in served.log().splitlines() if "clients file" in line]
        assert f"clients file {clients}: line 2: the client has no credential" in refusal
        assert refusal.endswith("keeping the previous version (1 clients)")
        assert tokens[1] not in served.log()

        rotate(clients, f"{lines[0]}\n{lines[1]}\n")
        code, out, err = await cli("jobs", "--target", served.target, env=as_b)
        assert (code, out, err) == (0, "", "")
        assert f"clients file {clients} reloaded: 2 clients" in served.log()
    finally:
        assert await served.stop() == 0
    assert not any(token in served.log() for token in tokens)
