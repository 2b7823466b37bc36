"""The processes of a benchmark: the gateway (`python -m dispatcher_gateway serve`), the bare
baselines, the sandbox, and the load generator's workers (multiprocessing, spawned)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port
from tests.support.process import GATEWAY, POLL, START_TIMEOUT, ServerProcess

from .messages import SANDBOX_EMAIL, SANDBOX_PASSWORD, TOKEN_KEY, WEBHOOK_SECRET

HOST = "127.0.0.1"
SPAWN = multiprocessing.get_context("spawn")


@contextlib.contextmanager
def running(
    name: str, args: list[str], env: dict[str, str], readyz: str, folder: Path
) -> Iterator[ServerProcess]:
    server = ServerProcess(name, tuple(args), env, folder / f"{name}.log", readyz)
    server.spawn()
    try:
        asyncio.run(server.ready())
        yield server
    finally:
        asyncio.run(server.stop())


@dataclass(frozen=True)
class GatewayAddrs:
    grpc: str
    webhook_port: int
    admin_port: int

    @property
    def readyz(self) -> str:
        return f"http://{HOST}:{self.admin_port}/readyz"

    @property
    def webhook_url(self) -> str:
        return f"http://{HOST}:{self.webhook_port}"


@contextlib.contextmanager
def gateway(
    folder: Path,
    *,
    store: str,
    upstream: str | None = None,
    rate: str = "100/min",
    workers: int = 1,
    sharing: str | None = None,
) -> Iterator[tuple[ServerProcess, GatewayAddrs]]:
    """The gateway as its own process, with its defaults but for loopback addresses, a plain HTTP
    webhook listener (TLS is the ingress's), and a fixed callback-token key. Without `upstream`
    the upstream is a closed port: async jobs stay queued, and at the default rate of 100/min the
    outbox costs next to nothing, as it would in production. `workers`: GATEWAY_WORKERS;
    `sharing`: how the workers share the webhook listener, when not the default (cli/workers.py's
    SHARING)."""
    addrs = GatewayAddrs(f"{HOST}:{free_port()}", free_port(), free_port())
    env = {
        "DISPATCHER_BASE_URL": upstream or f"http://{HOST}:{free_port()}",
        "DISPATCHER_EMAIL": SANDBOX_EMAIL,
        "DISPATCHER_PASSWORD": SANDBOX_PASSWORD,
        "DISPATCHER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GATEWAY_PUBLIC_URL": f"https://{HOST}:{addrs.webhook_port}",
        "GATEWAY_GRPC_ADDR": addrs.grpc,
        "GATEWAY_WEBHOOK_ADDR": f"{HOST}:{addrs.webhook_port}",
        "GATEWAY_ADMIN_ADDR": f"{HOST}:{addrs.admin_port}",
        "GATEWAY_STORE": store,
        "GATEWAY_TOKEN_KEY": TOKEN_KEY,
        "GATEWAY_UPSTREAM_RATE": rate,
        # The load generators call as one client what many would: its limits must not be what
        # is measured.
        "GATEWAY_ALLOW_ANONYMOUS": "true",
        "GATEWAY_CLIENT_DISPATCH_RATE": "1000000/s",
        "GATEWAY_CLIENT_MAX_QUEUED": "10000000",
        "GATEWAY_CLIENT_MAX_STREAMS": "1000000",
        "GATEWAY_WORKERS": str(workers),
    }
    args = list(GATEWAY)
    if sharing is not None:
        args = ["-c", _SHARING.format(sharing=sharing)]
    name = "gateway" if workers == 1 else f"gateway-{workers}-workers"
    with running(name, args, env, addrs.readyz, folder) as server:
        yield server, addrs


_SHARING = (
    "import sys; import dispatcher_gateway.cli.workers as w; w.SHARING = {sharing!r}; "
    "from dispatcher_gateway.cli import main; sys.argv[1:] = ['serve']; sys.exit(main())"
)


@contextlib.contextmanager
def bare_grpc(
    folder: Path, processes: int = 1, *, floor: bool = False, upstream: str | None = None
) -> Iterator[tuple[list[ServerProcess], GatewayAddrs]]:
    """`processes` bare gRPC servers on one port (SO_REUSEPORT when more than one), each with an
    admin port of its own; the addresses are the first's. `floor`: each writes a row per call to
    a file of its own (bare.py), and with `upstream` (the sandbox) sends a sync call there between
    two rows."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        servers, first = [], None
        for index in range(processes):
            addrs = GatewayAddrs(f"{HOST}:{port}", 0, free_port())
            first = first or addrs
            args = ["-m", "tests.bench.bare", "grpc", "--port", str(port)]
            args += ["--admin-port", str(addrs.admin_port)]
            if processes > 1:
                args.append("--reuse-port")
            name = "bare-grpc" if processes == 1 else f"bare-grpc-{index}"
            env = {}
            if floor:
                name = name.replace("bare", "floor")
                args += ["--store", str(folder / f"{name}-{port}.db")]
                if upstream is not None:
                    args += ["--upstream", upstream]
                    env = {
                        "DISPATCHER_EMAIL": SANDBOX_EMAIL,
                        "DISPATCHER_PASSWORD": SANDBOX_PASSWORD,
                    }
            servers.append(stack.enter_context(running(name, args, env, addrs.readyz, folder)))
        assert first is not None
        yield servers, first


@contextlib.contextmanager
def bare_webhook(
    folder: Path, processes: int = 1, *, floor: bool = False
) -> Iterator[tuple[int, list[int], list[str]]]:
    """`processes` bare webhook servers on one port (SO_REUSEPORT when more than one): the port,
    their pids, and with `floor` (bare.py: each writes a row per webhook to a file of its own and
    sends it to its streams) the gRPC address of each one's streams."""
    port = free_port()
    url = f"http://{HOST}:{port}/readyz"
    with contextlib.ExitStack() as stack:
        servers, streams = [], []
        for index in range(processes):
            args = ["-m", "tests.bench.bare", "webhook", "--port", str(port)]
            if processes > 1:
                args.append("--reuse-port")
            name = "bare-webhook" if processes == 1 else f"bare-webhook-{index}"
            if floor:
                name = name.replace("bare", "floor")
                streams.append(f"{HOST}:{free_port()}")
                args += ["--store", str(folder / f"{name}-{port}.db")]
                args += ["--grpc-port", streams[-1].rpartition(":")[2]]
            servers.append(stack.enter_context(running(name, args, {}, url, folder)))
        yield port, [server.pid for server in servers], streams


@contextlib.contextmanager
def sandbox(folder: Path, *options: str) -> Iterator[str]:
    """`options`: more of `dispatcher-gateway sandbox`'s (--sync-delay 2 ...)."""
    port = free_port()
    args = ["-m", "dispatcher_gateway", "sandbox", "--port", str(port)]
    args += ["--email", SANDBOX_EMAIL, *options]
    env = {"SANDBOX_PASSWORD": SANDBOX_PASSWORD, "SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET}
    url = f"http://{HOST}:{port}"
    with running("sandbox", args, env, f"{url}/healthz", folder):
        yield url


def wait_streams(readyz: str, wanted: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while int(client.get(readyz).json()["streams"]) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {wanted} streams at {readyz}")
            time.sleep(POLL)


def wait_each_streams(url: str, pids: list[int], timeout: float = START_TIMEOUT) -> None:
    """Until each of the processes `pids` sharing the port of `url` (its /readyz) says it holds a
    stream: a new connection each time, which the kernel hands to any of them."""
    deadline = time.monotonic() + timeout
    waiting = set(pids)
    while waiting:
        found = httpx.get(url, headers={"Connection": "close"}).json()
        if found["streams"] > 0:
            waiting.discard(found["pid"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {sorted(waiting)} hold no stream ({url})")
        time.sleep(POLL / 10)


def webhooks_by_worker(admin_port: int) -> dict[str, int]:
    """Webhooks recorded so far by each worker (its index; "0" for a gateway of one)."""
    page = httpx.get(f"http://{HOST}:{admin_port}/metrics").text
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "dispatcher_gateway_webhooks_total" and (
                sample.labels.get("outcome") == "recorded"
            ):
                worker = sample.labels.get("worker", "0")
                found[worker] = found.get(worker, 0) + int(sample.value)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user and system) the processes `pids` and their children have used so far: a
    figure that other load on the machine does not inflate, as it does wall time."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            todo.extend(int(child) for child in children)
    return total


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


# The load generator's workers


def _child(fn: Callable[..., Any], args: tuple[Any, ...], results: Any, index: int) -> None:
    try:
        results.put((index, fn(*args), None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))


class Workers:
    """Load-generator functions, each in a spawned process of its own; `results()` waits."""

    def __init__(self) -> None:
        self._results = SPAWN.Queue()
        self._procs: list[Any] = []

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        proc = SPAWN.Process(target=_child, args=(fn, args, self._results, len(self._procs)))
        proc.start()
        self._procs.append(proc)

    def results(self, timeout: float) -> list[Any]:
        found: dict[int, Any] = {}
        count = len(self._procs)
        deadline = time.monotonic() + timeout
        try:
            while len(found) < count:
                left = deadline - time.monotonic()
                try:
                    index, value, error = self._results.get(timeout=max(left, 0.01))
                except queue.Empty:
                    raise TimeoutError("a load-generator worker did not finish") from None
                if error is not None:
                    raise RuntimeError(f"load-generator worker failed:\n{error}")
                found[index] = value
        finally:
            self.close()
        return [found[i] for i in range(count)]

    def wait(self, event: Any, timeout: float) -> bool:
        """Wait for `event` (a multiprocessing Event a worker sets); False after `timeout`.
        A worker that ended before setting it raised: its error is raised here at once."""
        deadline = time.monotonic() + timeout
        while not event.wait(POLL):
            if any(proc.exitcode is not None for proc in self._procs):
                self.results(POLL)
                raise RuntimeError("a load-generator worker ended early")
            if time.monotonic() > deadline:
                return False
        return True

    def close(self) -> None:
        for proc in self._procs:
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
            proc.close()
        self._results.close()
        self._results.join_thread()
        self._procs = []


def run(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """One worker, waited for."""
    workers = Workers()
    workers.start(fn, *args)
    return workers.results(timeout)[0]
