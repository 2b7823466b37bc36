"""examples/ run as a user runs them, against `dispatcher-gateway serve --sandbox` (what `make run`
starts) on free loopback ports: the Node.js client (@grpc/grpc-js, its packages installed here
with `npm ci` from examples/node/package-lock.json when missing) and the curl script on the JSON
face. Their output is what they found: each line is checked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NODE_EXAMPLE = EXAMPLES / "node"
CURL_EXAMPLE = EXAMPLES / "curl" / "json-face.sh"
START_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0
NPM_TIMEOUT = 300.0


@dataclass
class Sandboxed:
    grpc_addr: str
    http_url: str


async def wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(START_TIMEOUT), httpx.AsyncClient() as client:
        while True:
            assert process.returncode is None, f"serve --sandbox exited: {log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Sandboxed]:
    """`dispatcher-gateway serve --sandbox` in tmp_path (its store and CA go under data/)."""
    ports = {name: free_port() for name in ("GRPC", "WEBHOOK", "ADMIN", "HTTP")}
    env = {f"GATEWAY_{name}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()}
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher_gateway",
            "serve",
            "--sandbox",
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=output,
            stderr=output,
        )
    try:
        await wait_ready(f"http://127.0.0.1:{ports['ADMIN']}/readyz", process, log)
        yield Sandboxed(env["GATEWAY_GRPC_ADDR"], f"http://127.0.0.1:{ports['HTTP']}")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), START_TIMEOUT)


async def run(*args: str, cwd: Path, env: dict[str, str], timeout: float) -> list[str]:
    """The command's output lines; it must exit 0."""
    command = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(command.communicate(), timeout)
    assert command.returncode == 0, f"{args[0]} exited {command.returncode}: {out!r} {err!r}"
    return out.decode().splitlines()


def checked(lines: list[str]) -> tuple[str, list[list[str]], str, list[list[str]]]:
    """(job id, watched events, first subscribed cursor, resumed events) from the examples'
    shared line format, each line's shape checked."""
    kind, job, state = lines[0].split()
    assert (kind, state) == ("dispatched", "JOB_STATE_QUEUED")
    assert job.startswith("job_")
    watched = [
        line.split()[1:] for line in lines if line.startswith("watch ") and "status" not in line
    ]
    resumed = [line.split()[1:] for line in lines if line.startswith("resumed ")]
    [first] = [line.split()[1] for line in lines if line.startswith("subscribe ")]
    assert lines[-1] == "done"
    return job, watched, first, resumed


async def npm_ci() -> None:
    if (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    npm = shutil.which("npm")
    assert npm is not None, "Node.js 20 and npm are needed for examples/node"
    await run(npm, "ci", "--no-audit", "--no-fund", cwd=NODE_EXAMPLE, env={}, timeout=NPM_TIMEOUT)


async def test_the_node_client_dispatches_watches_and_resumes_a_subscription(
    served: Sandboxed,
) -> None:
    await npm_ci()
    node = shutil.which("node")
    assert node is not None
    lines = await run(
        node,
        "client.js",
        cwd=NODE_EXAMPLE,
        env={"GATEWAY_TARGET": served.grpc_addr},
        timeout=RUN_TIMEOUT,
    )
    job, watched, first, resumed = checked(lines)
    assert [w[1:] for w in watched] == [
        ["queued", "JOB_STATE_QUEUED"],
        ["dispatch_completed", "JOB_STATE_SUCCEEDED", "terminal"],
    ]
    assert f"subscribe {first} queued JOB_STATE_QUEUED" in lines
    assert f"resume after {first}" in lines
    # The subscription, broken off and resumed, saw what the watch saw: no gap, no repeat.
    assert [first] + [r[0] for r in resumed] == [w[0] for w in watched]
    assert resumed[-1][1:] == ["dispatch_completed", "JOB_STATE_SUCCEEDED", "terminal"]
    assert job in lines[0]


async def test_the_curl_script_uses_the_json_face_and_resumes_from_last_event_id(
    served: Sandboxed,
) -> None:
    lines = await run(
        "sh",
        str(CURL_EXAMPLE),
        cwd=EXAMPLES,
        env={"GATEWAY_HTTP_URL": served.http_url},
        timeout=RUN_TIMEOUT,
    )
    job, watched, first, resumed = checked(lines)
    assert [w[1] for w in watched] == ["queued", "dispatch_completed"]
    assert "watch status OK" in lines
    assert f"job {job} JOB_STATE_SUCCEEDED dispatch_completed" in lines
    assert first == watched[0][0]
    assert [first] + [r[0] for r in resumed] == [w[0] for w in watched]
    assert resumed[-1][1] == "dispatch_completed"
