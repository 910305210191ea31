"""Mesh links: one per node pair (simultaneous dials), the directory's node list, and a
silent node whose link times out (its circuits end node_lost)."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import trio
from mesh_nodes import SECRET, running_cluster
from relayclient import connect, new_peer

from darkswap_trio.proto.signaling import CircuitLimits, CloseRelay, DataChannel
from darkswap_trio.websocket import open_websocket
from relay.cluster._mesh_handshake import MeshDialer
from relay.cluster._mesh_wire import (
    MeshChallenge,
    MeshError,
    MeshOpen,
    MeshOpened,
    MeshReady,
    decode_mesh_untrusted,
    encode_mesh,
)
from relay.cluster._types import NodeAddress


async def test_simultaneous_dials_settle_on_one_link(tmp_path):
    with trio.fail_after(20):
        async with running_cluster(tmp_path, 2) as (servers, locator):
            n0, n1 = locator.nodes["node0"], locator.nodes["node1"]
            links0, links1 = servers[0].mesh.links, servers[1].mesh.links
            got: dict[int, object] = {}

            async def dial(i, links, address):
                got[i] = await links.link_to(address)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial, 0, links0, n1)
                nursery.start_soon(dial, 1, links1, n0)
            smaller = min(servers[0].peer_id, servers[1].peer_id)
            primary0, primary1 = links0.link(n1.node_peer_id), links1.link(n0.node_peer_id)
            assert primary0.dialer == primary1.dialer == smaller
            with trio.fail_after(5):  # the other link closes: it carries no circuit
                while len(links0.links()) > 1 or len(links1.links()) > 1:
                    await trio.sleep(0.01)
            assert links0.links() == [primary0] and links1.links() == [primary1]


async def handshake_as(ws, dialer: MeshDialer) -> None:
    await ws.send(encode_mesh(dialer.hello()))
    challenge = decode_mesh_untrusted(await ws.receive())
    assert isinstance(challenge, MeshChallenge), challenge
    await ws.send(encode_mesh(dialer.challenge(challenge)))
    return decode_mesh_untrusted(await ws.receive())


async def test_node_not_in_the_directory_is_refused(tmp_path):
    with trio.fail_after(15):
        async with running_cluster(tmp_path, 1) as (servers, locator):
            node = servers[0]
            url = f"ws://127.0.0.1:{node.signaling_port}/mesh"
            async with open_websocket(url) as ws:  # right secret, unknown key
                answer = await handshake_as(ws, MeshDialer(new_peer(), SECRET, node.peer_id))
            assert answer == MeshError(
                "not_in_cluster", "this node is not in the cluster directory"
            )


async def test_silent_node_times_out_and_its_circuits_end(tmp_path):
    """A fake node links up, opens a circuit to a peer of node0, then sends nothing:
    after link_timeout (3 s here) node0 drops the link and tells its peer node_lost."""
    with trio.fail_after(20):
        async with running_cluster(tmp_path, 1) as (servers, locator), AsyncExitStack() as st:
            node = servers[0]
            fake_key = new_peer()
            locator.add_node(NodeAddress("fake", "127.0.0.1:9", str(fake_key.peer_id)))
            peer = await st.enter_async_context(connect(node))
            await peer.register_extended(new_peer(), node.peer_id, open_mode=True)
            url = f"ws://127.0.0.1:{node.signaling_port}/mesh"
            async with open_websocket(url) as ws:
                answer = await handshake_as(ws, MeshDialer(fake_key, SECRET, node.peer_id))
                assert answer == MeshReady()
                remote_peer = str(new_peer().peer_id)
                relay_id = uuid.uuid4().bytes
                limits = CircuitLimits(0.0, 0, 0, 65536, 16384)
                await ws.send(encode_mesh(MeshOpen(relay_id, remote_peer, peer.peer_id, limits)))
                opened = decode_mesh_untrusted(await ws.receive())
                # The tighter of both: our window and frame, node0's duration and data cap.
                agreed = CircuitLimits(3600.0, 1 << 30, 0, 65536, 16384)
                assert opened == MeshOpened(relay_id, agreed)
                announced = await peer.expect(DataChannel)
                assert announced.limits == agreed and announced.peer_id == remote_peer
                start = trio.current_time()
                text = str(uuid.UUID(bytes=relay_id))
                assert await peer.expect(CloseRelay) == CloseRelay(text, "node_lost")
                assert 2.5 <= trio.current_time() - start < 6
                assert node.statistics().circuits == 0
