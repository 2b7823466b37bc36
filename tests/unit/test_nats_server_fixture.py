"""The nats-server fixture: starts cleanly, single node and cluster, and stops without leftovers."""

from __future__ import annotations

import nats

from tests.support.nats_server import NatsEndpoint, NatsFactory


async def _jetstream_answers(servers: list[str]) -> int:
    nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=1)
    try:
        info = await nc.jetstream().account_info()
        return int(info.streams)
    finally:
        await nc.close()


async def test_the_session_server_has_jetstream(nats_server: NatsEndpoint) -> None:
    assert await _jetstream_answers(nats_server.servers) >= 0


async def test_a_three_node_cluster_is_ready_with_a_meta_leader(
    start_nats_server: NatsFactory,
) -> None:
    cluster = start_nats_server(nodes=3)

    for url in cluster.urls:
        assert await _jetstream_answers([url]) >= 0


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
