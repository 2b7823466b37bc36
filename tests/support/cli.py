"""The command line as a user runs it: `python -m dispatcher_gateway ...`, a process of its own."""

from __future__ import annotations

import asyncio
import os
import sys


async def run_cli(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); `env` is added to this process's environment."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher_gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(cli.communicate(), timeout)
    assert cli.returncode is not None
    return cli.returncode, out.decode(), err.decode()
