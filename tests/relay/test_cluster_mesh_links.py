"""Mesh links: one per node pair (simultaneous dials), the directory's node list, and a
silent node whose link times out (its circuits end node_lost)."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import trio
from mesh_nodes import SECRET, running_cluster
from relayclient import connect, new_peer

from darkswap_trio.proto.signaling import (
    CircuitLimits,
    CloseRelay,
    DataChannel,
    RelayRequest,
    RelayResponse,
)
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
                locator.place(remote_peer, "fake")  # node0 checks the requester is the fake's
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


async def test_a_restarted_node_is_linked_again(tmp_path):
    """node1 crashes (the link breaks, its circuit ends node_lost) and comes back with
    the same key and port: the next RelayRequest dials it again and works."""
    from mesh_nodes import running_cluster_handle

    with trio.fail_after(20):
        async with running_cluster_handle(tmp_path, 2) as cluster, AsyncExitStack() as st:
            node0 = cluster.servers[0]
            a = await st.enter_async_context(connect(node0))
            await a.register_extended(new_peer(), node0.peer_id, open_mode=True)
            cluster.locator.place(a.peer_id, "node0")

            async def peer_on_node1():
                b = await st.enter_async_context(connect(cluster.servers[1]))
                await b.register_extended(new_peer(), cluster.servers[1].peer_id, open_mode=True)
                cluster.locator.place(b.peer_id, "node1")
                return b

            b = await peer_on_node1()
            await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
            first = await a.expect(RelayResponse)
            assert first.accepted
            cluster.crash(1)
            assert await a.expect(CloseRelay) == CloseRelay(first.relay_id, "node_lost")
            await cluster.restart(1)
            b = await peer_on_node1()
            await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
            second = await a.expect(RelayResponse)
            assert second.accepted, second
            assert (await b.expect(DataChannel)).relay_id == second.relay_id
            assert node0.mesh.statistics().dials == 2


async def test_a_node_that_never_answers_is_refused_in_time(tmp_path):
    """A fake node accepts the link but never answers MeshOpen: the requester is refused
    node_unreachable after open_timeout, and the fake node is told to close."""

    from darkswap_trio.websocket import serve_websocket
    from relay.cluster._mesh_handshake import MeshAcceptor
    from relay.cluster._mesh_wire import MeshAuth, MeshClose, MeshHello

    fake_key = new_peer()
    received: list[object] = []

    async def fake_node(request):
        ws = await request.accept()
        acceptor = MeshAcceptor(fake_key, SECRET)
        hello = decode_mesh_untrusted(await ws.receive())
        assert isinstance(hello, MeshHello)
        await ws.send(encode_mesh(acceptor.hello(hello)))
        auth = decode_mesh_untrusted(await ws.receive())
        assert isinstance(auth, MeshAuth)
        await ws.send(encode_mesh(acceptor.auth(auth)))
        while True:
            frame = await ws.receive()
            if isinstance(frame, str):
                received.append(decode_mesh_untrusted(frame))

    with trio.fail_after(20):
        async with (
            running_cluster(tmp_path, 1, open_timeout=1.0) as (servers, locator),
            AsyncExitStack() as st,
            trio.open_nursery() as nursery,
        ):
            (listener,) = await nursery.start(serve_websocket, fake_node, "127.0.0.1", 0)
            port = listener.socket.getsockname()[1]
            locator.add_node(NodeAddress("fake", f"127.0.0.1:{port}", str(fake_key.peer_id)))
            a = await st.enter_async_context(connect(servers[0]))
            await a.register_extended(new_peer(), servers[0].peer_id, open_mode=True)
            target = str(new_peer().peer_id)
            locator.place(target, "fake")
            start = trio.current_time()
            await a.send(RelayRequest(from_=a.peer_id, to=target))
            resp = await a.expect(RelayResponse)
            assert (resp.accepted, resp.code) == (False, "node_unreachable")
            assert 0.9 <= trio.current_time() - start < 3
            with trio.fail_after(2):
                while not any(isinstance(m, MeshClose) for m in received):
                    await trio.sleep(0.01)
            opened = [m for m in received if isinstance(m, MeshOpen)]
            closed = [m for m in received if isinstance(m, MeshClose)]
            assert len(opened) == 1 and closed[0].relay_id == opened[0].relay_id
            assert servers[0].statistics().circuits == 0
            nursery.cancel_scope.cancel()
