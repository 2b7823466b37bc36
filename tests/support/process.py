"""A server as a process of its own (`python -m ...`), for what only a process shows: SIGTERM
draining, SIGKILL at any moment, restarts on the same store, its memory; and the gateway's
environment for one on loopback against the sandbox.

One wrapper for the end-to-end suites and the benchmarks. Its waits are coroutines that poll, so
that the event loop keeps serving what the process calls (the sandbox of a test runs in the
test's own loop); synchronous callers run them with `asyncio.run`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .loopback import (
    HOST,
    SANDBOX_EMAIL,
    SANDBOX_PASSWORD,
    WEBHOOK_SECRET,
    RunningSandbox,
    TlsFiles,
)
from .ports import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL = 0.05
GATEWAY = ("-m", "dispatcher_gateway", "serve")


@dataclass
class ServerProcess:
    """`python <args>` with `env` added to this process's environment, its output appended to
    `log_path`; it serves once `readyz` answers 200."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    readyz: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    async def start(self) -> None:
        self.spawn()
        await self.ready()

    def spawn(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    async def ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until `readyz` answers 200; RuntimeError if the process exits first."""
        async with asyncio.timeout(timeout), httpx.AsyncClient() as client:
            while True:
                if self.returncode is not None:
                    raise RuntimeError(f"{self.name} exited {self.returncode}: {self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.readyz)).status_code == 200:
                        return
                await asyncio.sleep(POLL)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """None while the process runs."""
        assert self.process is not None
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def rss_mb(self) -> float:
        """Resident memory now, from the kernel's own count."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    async def exited(self, timeout: float = STOP_TIMEOUT) -> int:
        async with asyncio.timeout(timeout):
            while (code := self.returncode) is None:
                await asyncio.sleep(POLL)
        return code

    async def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.exited()

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, and its exit status once it has drained."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.exited(timeout)

    async def stop(self) -> None:
        """SIGTERM if still running, SIGKILL if it has not exited STOP_TIMEOUT later."""
        if self.process is None or self.returncode is not None:
            return
        try:
            await self.terminate()
        except TimeoutError:
            await self.kill()

    async def close(self) -> None:
        """SIGKILL if still running: a test's teardown."""
        if self.process is not None and self.returncode is None:
            await self.kill()


def gateway_process(env: dict[str, str], log_path: Path) -> ServerProcess:
    """`python -m dispatcher_gateway serve` with `env` (GATEWAY_ADMIN_ADDR names its readyz)."""
    return ServerProcess(
        "gateway", GATEWAY, env, log_path, f"http://{env['GATEWAY_ADMIN_ADDR']}/readyz"
    )


def gateway_env(sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path) -> dict[str, str]:
    """A gateway on free loopback ports, against the sandbox, its webhook on HTTPS, its store a
    SQLite file under `tmp_path`."""
    webhook_port = free_port()
    return {
        "DISPATCHER_BASE_URL": sandbox.url,
        "DISPATCHER_EMAIL": SANDBOX_EMAIL,
        "DISPATCHER_PASSWORD": SANDBOX_PASSWORD,
        "DISPATCHER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GATEWAY_PUBLIC_URL": f"https://{HOST}:{webhook_port}",
        "GATEWAY_GRPC_ADDR": f"{HOST}:{free_port()}",
        "GATEWAY_WEBHOOK_ADDR": f"{HOST}:{webhook_port}",
        "GATEWAY_ADMIN_ADDR": f"{HOST}:{free_port()}",
        "GATEWAY_STORE": str(tmp_path / "gateway.db"),
        "GATEWAY_TLS_CERT_FILE": tls.cert,
        "GATEWAY_TLS_KEY_FILE": tls.key,
        "GATEWAY_UPSTREAM_RATE": "6000/min",
        "GATEWAY_ALLOW_ANONYMOUS": "true",
    }
