"""The nats-server fixture: starts cleanly, single node and cluster, and stops without leftovers."""

from __future__ import annotations

import uuid

import nats

from tests.support.nats_server import NatsEndpoint, NatsFactory


async def _streams(servers: list[str]) -> int:
    """How many streams the server's JetStream account holds, as it answers."""
    nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=1)
    try:
        info = await nc.jetstream().account_info()
        return int(info.streams)
    finally:
        await nc.close()


async def _add_stream(servers: list[str], name: str, replicas: int = 1) -> None:
    nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await nc.jetstream().add_stream(name=name, subjects=[f"{name}.>"], num_replicas=replicas)
    finally:
        await nc.close()


async def _delete_stream(servers: list[str], name: str) -> None:
    nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


async def test_the_session_server_has_jetstream(nats_server: NatsEndpoint) -> None:
    # Other tests share the server: count from what it holds now.
    name = f"fixture_{uuid.uuid4().hex[:12]}"
    before = await _streams(nats_server.servers)
    await _add_stream(nats_server.servers, name)
    try:
        assert await _streams(nats_server.servers) == before + 1
    finally:
        await _delete_stream(nats_server.servers, name)


async def test_a_three_node_cluster_is_ready_with_a_meta_leader(
    start_nats_server: NatsFactory,
) -> None:
    cluster = start_nats_server(nodes=3)

    assert [await _streams([url]) for url in cluster.urls] == [0, 0, 0]
    # A replicated stream needs a meta leader to place it on the three nodes.
    await _add_stream(cluster.urls, "placed", replicas=3)
    assert [await _streams([url]) for url in cluster.urls] == [1, 1, 1]


def test_stopping_a_node_ends_its_process(start_nats_server: NatsFactory) -> None:
    cluster = start_nats_server()
    [node] = cluster.nodes
    process = node.process
    assert process is not None

    node.stop()

    assert process.returncode is not None
    assert not node.healthy()


def test_a_restarted_node_listens_on_the_same_port(start_nats_server: NatsFactory) -> None:
    cluster = start_nats_server()
    [node] = cluster.nodes
    url = node.url

    node.kill()
    node.start()
    cluster.wait_ready()

    assert node.url == url
    assert node.healthy()
