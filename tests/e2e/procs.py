"""The gateway as a real process (`python -m dispatcher_gateway serve`), for what only a process
shows: SIGTERM draining, SIGKILL at any moment, restarts on the same store."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .conftest import (
    SANDBOX_EMAIL,
    SANDBOX_PASSWORD,
    WEBHOOK_SECRET,
    RunningSandbox,
    TlsFiles,
    free_port,
)

START_TIMEOUT = 30.0


def gateway_env(sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path) -> dict[str, str]:
    webhook_port = free_port()
    return {
        "DISPATCHER_BASE_URL": sandbox.url,
        "DISPATCHER_EMAIL": SANDBOX_EMAIL,
        "DISPATCHER_PASSWORD": SANDBOX_PASSWORD,
        "DISPATCHER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GATEWAY_PUBLIC_URL": f"https://127.0.0.1:{webhook_port}",
        "GATEWAY_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_WEBHOOK_ADDR": f"127.0.0.1:{webhook_port}",
        "GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_STORE": str(tmp_path / "gateway.db"),
        "GATEWAY_TLS_CERT_FILE": tls.cert,
        "GATEWAY_TLS_KEY_FILE": tls.key,
        "GATEWAY_UPSTREAM_RATE": "6000/min",
        "GATEWAY_ALLOW_ANONYMOUS": "true",
    }


@dataclass
class GatewayProcess:
    env: dict[str, str]
    log_path: Path
    admin_port: int
    process: asyncio.subprocess.Process | None = None
    starts: int = field(default=0)

    async def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dispatcher_gateway",
                "serve",
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        await self.wait_ready()

    async def wait_ready(self) -> None:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise RuntimeError(f"gateway exited {self.process.returncode}: {self.log()}")
                try:
                    answer = await client.get(f"http://127.0.0.1:{self.admin_port}/readyz")
                    if answer.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"gateway not ready: {self.log()}")
                await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
