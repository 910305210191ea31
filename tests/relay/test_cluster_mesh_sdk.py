"""SDK peers (RelayManager) on different relay nodes of one cluster: circuits across the
mesh, and what a node crash costs (only the circuits through it)."""

from __future__ import annotations

import pytest
import trio
from mesh_nodes import running_cluster_handle

from darkswap_trio import Keypair, RelayManager, RelayManagerConfig

FAST = RelayManagerConfig(
    connection_timeout=5,
    ping_interval=1,
    reconnect_interval=0.05,
    max_reconnect_attempts=1,
    max_reconnect_interval=0.2,
)


async def manager_on(stack, cluster, node: int) -> RelayManager:
    keypair = Keypair.generate()
    cluster.locator.place(str(keypair.peer_id), f"node{node}")
    manager = RelayManager(keypair, [cluster.servers[node].multiaddr], FAST, deliver_incoming=False)
    await stack.enter_async_context(manager)
    await manager.wait_connected(timeout=5)
    return manager


async def open_pair(a: RelayManager, b: RelayManager):
    circuit = await a.open_circuit(b.local_peer_id)
    incoming = await b.accept_circuit()
    assert incoming.relay_id == circuit.relay_id
    return circuit, incoming


async def exchange(x, y, size: int) -> None:
    """``size`` bytes each way, concurrently, checked."""
    blob_x = bytes(range(253)) * (size // 253 + 1)
    blob_y = bytes(range(250, 0, -1)) * (size // 250 + 1)

    async def send(channel, blob):
        for i in range(0, len(blob), 16384):
            await channel.send(blob[i : i + 16384])

    async def receive(channel, want):
        got = bytearray()
        while len(got) < len(want):
            got += await channel.receive()
        assert bytes(got) == want

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, x, blob_x)
        nursery.start_soon(send, y, blob_y)
        nursery.start_soon(receive, y, blob_x)
        nursery.start_soon(receive, x, blob_y)


async def drain(circuit) -> None:
    with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
        while True:
            await circuit.receive()


async def test_sdk_circuits_across_three_nodes_and_a_crash(tmp_path):
    from contextlib import AsyncExitStack

    with trio.fail_after(40):
        async with (
            running_cluster_handle(tmp_path, 3, auth="signature") as cluster,
            AsyncExitStack() as stack,
        ):
            a = await manager_on(stack, cluster, 0)
            b = await manager_on(stack, cluster, 1)
            c = await manager_on(stack, cluster, 2)
            ab, ba = await open_pair(a, b)
            ac, ca = await open_pair(a, c)
            bc, cb = await open_pair(b, c)
            # 1 MiB each way on each circuit (4 windows: credit goes round both hops).
            for x, y in ((ab, ba), (ac, ca), (bc, cb)):
                await exchange(x, y, 1 << 20)
            assert cluster.servers[0].mesh.statistics().links == 2

            cluster.crash(2)  # node2 dies: a-c and b-c end, a-b goes on
            for circuit in (ac, bc):
                await drain(circuit)
                assert circuit.close_reason == "node_lost"
            for circuit in (ca, cb):  # c's relay is gone: c's ends end too
                await drain(circuit)
                assert circuit.close_reason in ("node_lost", "relay connection lost"), circuit
            await exchange(ab, ba, 256 * 1024)
            stats = cluster.servers[0].mesh.statistics()
            assert (stats.links, stats.cross_node_circuits) == (1, 1)


async def test_p2p_networks_on_two_nodes_link_over_the_mesh(tmp_path):
    """P2PNetwork peers (direct disabled) on different nodes: a PeerLink over a
    cross-node relay circuit carries messages both ways."""
    from darkswap_trio import Config, P2PConfig, P2PNetwork

    def network(server) -> P2PNetwork:
        config = Config(
            p2p=P2PConfig(relay_servers=[server.multiaddr], enable_direct=False),
            relay_manager=FAST,
        )
        return P2PNetwork(config)

    with trio.fail_after(30):
        async with running_cluster_handle(tmp_path, 2, auth="signature") as cluster:
            async with network(cluster.servers[0]) as a, network(cluster.servers[1]) as b:
                cluster.locator.place(a.local_peer_id, "node0")
                cluster.locator.place(b.local_peer_id, "node1")
                await a.wait_relay_connected()
                await b.wait_relay_connected()
                link = await a.connect_to_peer(b.local_peer_id)
                incoming = await b.accept_peer()
                assert incoming.peer_id == a.local_peer_id
                for i in range(50):
                    message = bytes([i]) * 20_000
                    await link.send(message)
                    assert await incoming.receive() == message
                    await incoming.send(message[::-1])
                    assert await link.receive() == message[::-1]
                assert cluster.servers[0].mesh.statistics().cross_node_circuits >= 1
