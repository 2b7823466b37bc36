"""Start order does not matter: a gateway started before its NATS cluster (or while the cluster
cannot place an R3 stream yet) stays up and not ready, and serves once the streams answer; a
SIGTERM while it waits ends it cleanly. And NATS over TLS with a token, from the *_FILE settings
the Kubernetes manifests use."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support.loopback import RunningSandbox, TlsFiles
from tests.support.nats_server import NatsFactory, nats_server_binary
from tests.support.process import ServerProcess, gateway_env, gateway_process

WAITING = 3.0
"""Seconds the gateway is watched waiting (alive, live, not ready) at each step."""
SETTLED_TIMEOUT = 90.0
"""Seconds for a gateway to give up one attempt on a cluster that cannot place R3 streams: its
store's own wait for the cluster to settle (30 s) and the backoff before it."""


async def assert_waiting(gateway: ServerProcess) -> None:
    """Alive, /healthz 200 and /readyz 503, for WAITING seconds."""
    base = f"http://{gateway.env['GATEWAY_ADMIN_ADDR']}"
    loop = asyncio.get_running_loop()
    end = loop.time() + WAITING
    seen_live = False
    async with httpx.AsyncClient() as client:
        while loop.time() < end:
            assert gateway.returncode is None, gateway.log()
            try:
                live = await client.get(f"{base}/healthz")
                ready = await client.get(f"{base}/readyz")
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            assert live.status_code == 200
            assert ready.status_code == 503, ready.text
            seen_live = True
            await asyncio.sleep(0.2)
    assert seen_live, gateway.log()


async def wait_for_log(gateway: ServerProcess, text: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while text not in gateway.log_path.read_text(errors="replace"):
            assert gateway.returncode is None, gateway.log()
            await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(SETTLED_TIMEOUT + 60)
async def test_a_gateway_started_before_its_nats_cluster_waits_and_then_serves(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server(nodes=3)
    nats.stop()  # its ports are known and kept: the gateway is pointed at a cluster not yet up
    env = gateway_env(sandbox, tls, tmp_path)
    gateway = gateway_process(
        env | {"GATEWAY_STORE": nats.url, "GATEWAY_NATS_REPLICAS": "3"},
        tmp_path / "gateway.log",
    )
    try:
        gateway.spawn()
        await assert_waiting(gateway)
        # Two nodes of three: a meta leader, but no three peers for an R3 stream.
        for node in nats.nodes[:2]:
            node.start()
        await assert_waiting(gateway)
        await wait_for_log(gateway, "NATS JetStream is not ready", SETTLED_TIMEOUT)
        nats.nodes[2].start()
        await gateway.ready()
        assert await gateway.terminate() == 0
    finally:
        await gateway.close()


async def test_sigterm_while_waiting_for_the_store_exits_cleanly(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path, start_nats_server: NatsFactory
) -> None:
    nats = start_nats_server(nodes=1)
    nats.stop()
    env = gateway_env(sandbox, tls, tmp_path)
    gateway = gateway_process(
        env | {"GATEWAY_STORE": nats.url},
        tmp_path / "gateway.log",
    )
    try:
        gateway.spawn()
        await assert_waiting(gateway)
        assert await gateway.terminate(timeout=10.0) == 0
    finally:
        await gateway.close()


def start_secured_nats(folder: Path, token: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """One nats-server that requires TLS (a CA of its own) and a token: (process, port, CA)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    leaf.private_key_pem.write_to_path(folder / "key.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    (folder / "nats.conf").write_text(
        'listen: "127.0.0.1:-1"\n'
        f'ports_file_dir: "{folder}"\n'
        f'jetstream {{ store_dir: "{folder / "js"}" }}\n'
        f'authorization {{ token: "{token}" }}\n'
        f'tls {{ cert_file: "{folder / "cert.pem"}", key_file: "{folder / "key.pem"}" }}\n'
    )
    process = subprocess.Popen(
        [nats_server_binary(), "-c", str(folder / "nats.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ports_file = folder / f"{Path(nats_server_binary()).name}_{process.pid}.ports"
    for _ in range(200):
        if ports_file.is_file():
            try:
                ports = json.loads(ports_file.read_text())
                break
            except ValueError:
                pass
        assert process.poll() is None
        time.sleep(0.05)
    else:
        process.kill()
        raise TimeoutError("nats-server wrote no ports file")
    return process, int(ports["nats"][0].rpartition(":")[2]), str(folder / "ca.pem")


async def test_nats_over_tls_with_a_token_from_files(
    sandbox: RunningSandbox, tls: TlsFiles, tmp_path: Path
) -> None:
    token = "nats-token-for-the-gateway-0123456789"
    (tmp_path / "nats").mkdir()
    process, port, ca = start_secured_nats(tmp_path / "nats", token)
    (tmp_path / "token").write_text(token + "\n")
    env = gateway_env(sandbox, tls, tmp_path)
    gateway = gateway_process(
        env
        | {
            "GATEWAY_STORE": f"tls://127.0.0.1:{port}",
            "GATEWAY_NATS_CA_FILE": ca,
            "GATEWAY_NATS_TOKEN_FILE": str(tmp_path / "token"),
        },
        tmp_path / "gateway.log",
    )
    try:
        await gateway.start()
        assert await gateway.terminate() == 0
        assert token not in gateway.log_path.read_text()
    finally:
        await gateway.close()
        process.terminate()
        process.wait()
