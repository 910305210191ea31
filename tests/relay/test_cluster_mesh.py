"""Cross-node circuits between in-process relay nodes over real loopback mesh links."""

from __future__ import annotations

import uuid

import trio
from mesh_nodes import running_cluster
from relayclient import connect, new_peer

from darkswap_trio.proto.signaling import (
    CircuitCredit,
    CircuitData,
    CloseRelay,
    DataChannel,
    RelayRequest,
    RelayResponse,
)


async def registered(stack, server, locator, node_id):
    client = await stack.enter_async_context(connect(server))
    await client.register_extended(new_peer(), server.peer_id, open_mode=True)
    locator.place(client.peer_id, node_id)
    return client


async def open_cross(a, b):
    await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
    resp = await a.expect(RelayResponse)
    assert resp.accepted, resp
    announced = await b.expect(DataChannel)
    assert announced.relay_id == resp.relay_id and announced.peer_id == a.peer_id
    return uuid.UUID(resp.relay_id).bytes, resp


async def test_circuit_between_two_nodes(tmp_path):
    from contextlib import AsyncExitStack

    with trio.fail_after(20):
        async with running_cluster(tmp_path, 2) as (servers, locator), AsyncExitStack() as st:
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            rid, resp = await open_cross(a, b)
            assert resp.limits.window == 16 << 20  # the shipped circuit_window
            await a.send_data(rid, b"hello from a")
            assert await b.expect(CircuitData) == CircuitData(rid, b"hello from a")
            await b.send_data(rid, b"hello from b")
            assert await a.expect(CircuitData) == CircuitData(rid, b"hello from b")
            await b.send_credit(rid, 12)
            assert await a.expect(CircuitCredit) == CircuitCredit(rid, 12)
            assert servers[0].mesh.statistics().links == 1
            assert servers[1].mesh.statistics().cross_node_circuits == 1
            await a.send(CloseRelay(relay_id=resp.relay_id))
            assert await a.expect(CloseRelay) == CloseRelay(resp.relay_id, "closed")
            assert await b.expect(CloseRelay) == CloseRelay(resp.relay_id, "closed_by_peer")


async def test_slow_reader_on_far_node_does_not_grow_entry_node(tmp_path):
    """The receiver on node1 reads nothing: the sender on node0 is held to one window by
    credit, node0 holds (almost) nothing, node1 at most a window; then the receiver reads
    everything, intact, and its credit lets the sender go on."""
    from contextlib import AsyncExitStack

    window, frame = 4 << 20, 64 * 1024
    total = 3 * window
    with trio.fail_after(30):
        async with (
            running_cluster(tmp_path, 2, circuit_window=window) as (servers, locator),
            AsyncExitStack() as st,
        ):
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            rid, resp = await open_cross(a, b)
            assert resp.limits.window == window
            data = bytes(range(251)) * (total // 251) + bytes(total % 251)
            peaks = [0, 0]
            sent = 0
            balance = window
            # Phase 1: b reads nothing; a sends what its credit allows.
            while balance >= frame:
                await a.send_data(rid, data[sent : sent + frame])
                sent += frame
                balance -= frame
            for _ in range(50):  # let it settle: everything sent is inside the cluster
                await trio.sleep(0.01)
                for i, s in enumerate(servers):
                    peaks[i] = max(peaks[i], s.statistics().buffered_bytes)
            assert sent == window
            assert peaks[0] <= 64 * 1024, peaks  # the entry node forwarded it all
            assert peaks[1] <= window + 4096, peaks

            async def receive_all():
                got = bytearray()
                while len(got) < total:
                    msg = await b.recv()
                    if isinstance(msg, CircuitData):
                        got += msg.payload
                        await b.send_credit(rid, len(msg.payload))
                assert bytes(got) == data

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_all)
                while sent < total:
                    while balance < frame:
                        msg = await a.recv()
                        assert isinstance(msg, CircuitCredit), msg
                        balance += msg.increment
                    await a.send_data(rid, data[sent : sent + frame])
                    sent += frame
                    balance -= frame
                    peaks[0] = max(peaks[0], servers[0].statistics().buffered_bytes)
            assert peaks[0] <= window + 4096, peaks


async def test_refusals_reach_the_requester(tmp_path):
    from contextlib import AsyncExitStack

    from relay.cluster._types import NodeAddress

    with trio.fail_after(30):
        async with (
            running_cluster(tmp_path, 2, max_circuits_per_peer=1) as (servers, locator),
            AsyncExitStack() as st,
        ):
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            a2 = await registered(st, servers[0], locator, "node0")

            async def refused(client, to, code):
                await client.send(RelayRequest(from_=client.peer_id, to=to))
                resp = await client.expect(RelayResponse)
                assert (resp.accepted, resp.code, resp.to) == (False, code, to), resp

            await refused(a, str(new_peer().peer_id), "unknown_peer")  # nobody holds it
            ghost = str(new_peer().peer_id)
            locator.place(ghost, "node1")  # the directory is stale: node1 does not hold it
            await refused(a, ghost, "unknown_peer")
            await open_cross(a, b)
            await refused(a2, b.peer_id, "too_many_circuits")  # b's cap, checked on node1
            # A node that does not answer: its address is a closed port.
            with __import__("socket").socket() as s:
                s.bind(("127.0.0.1", 0))
                dead_port = s.getsockname()[1]
            locator.add_node(NodeAddress("dead", f"127.0.0.1:{dead_port}", str(new_peer().peer_id)))
            locator.place(ghost, "dead")
            await refused(a2, ghost, "node_unreachable")
            stats = servers[0].mesh.statistics()
            assert stats.dial_failures == 1 and stats.opening == 0


async def test_close_reasons_cross_both_ways(tmp_path):
    from contextlib import AsyncExitStack

    with trio.fail_after(30):
        async with running_cluster(tmp_path, 2) as (servers, locator), AsyncExitStack() as st:
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            # The target closes: the requester is told closed_by_peer.
            rid, resp = await open_cross(a, b)
            await b.send(CloseRelay(relay_id=resp.relay_id))
            assert await b.expect(CloseRelay) == CloseRelay(resp.relay_id, "closed")
            assert await a.expect(CloseRelay) == CloseRelay(resp.relay_id, "closed_by_peer")
            # The target's session ends: the requester is told peer_disconnected.
            rid, resp = await open_cross(a, b)
            await b.ws.aclose()
            assert await a.expect(CloseRelay) == CloseRelay(resp.relay_id, "peer_disconnected")
            with trio.fail_after(5):
                while servers[1].statistics().circuits or servers[0].statistics().circuits:
                    await trio.sleep(0.01)
            assert servers[0].mesh.statistics().cross_node_circuits == 0
            assert servers[1].mesh.statistics().cross_node_circuits == 0


async def test_sender_beyond_its_credit_closes_on_both_nodes(tmp_path):
    from contextlib import AsyncExitStack

    window = 128 * 1024
    with trio.fail_after(30):
        async with (
            running_cluster(tmp_path, 2, circuit_window=window) as (servers, locator),
            AsyncExitStack() as st,
        ):
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            rid, resp = await open_cross(a, b)
            for _ in range(3):
                await a.send_data(rid, b"x" * (64 * 1024))
            got = 0
            while True:
                msg = await b.recv()
                if isinstance(msg, CloseRelay):
                    break
                got += len(msg.payload)
            assert msg == CloseRelay(resp.relay_id, "credit_exceeded")
            assert got == window  # nothing beyond the credit crossed the mesh
            assert await a.expect(CloseRelay) == CloseRelay(resp.relay_id, "credit_exceeded")


async def test_mesh_metrics(tmp_path):
    from contextlib import AsyncExitStack

    with trio.fail_after(20):
        async with running_cluster(tmp_path, 2) as (servers, locator), AsyncExitStack() as st:
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            await open_cross(a, b)
            metrics = servers[0].metrics
            assert metrics.value("darkswap_relay_mesh_links") == 1
            assert metrics.value("darkswap_relay_mesh_cross_node_circuits") == 1
            assert metrics.value("darkswap_relay_mesh_dials_total") == 1
            body, _ = metrics.render()
            assert b"darkswap_relay_mesh_dial_failures_total 0.0" in body


async def test_legacy_clients_across_nodes(tmp_path):
    """--auth open: original-relay clients (any peer id, RelayData in base64) on two
    nodes open a circuit through the mesh, data both ways (credit granted by the relays)."""
    from contextlib import AsyncExitStack

    from darkswap_trio.proto.signaling import RelayData

    with trio.fail_after(20):
        async with (
            running_cluster(tmp_path, 2, circuit_window=256 * 1024) as (servers, locator),
            AsyncExitStack() as st,
        ):
            a = await st.enter_async_context(connect(servers[0]))
            b = await st.enter_async_context(connect(servers[1]))
            await a.register_legacy("peer1")
            await b.register_legacy("peer2")
            locator.place("peer1", "node0")
            locator.place("peer2", "node1")
            await a.send(RelayRequest(from_="peer1", to="peer2"))
            resp = await a.expect(RelayResponse)
            assert resp.accepted
            assert await b.expect_circuit_announcement("peer1") == resp.relay_id
            for i in range(20):  # well past a window of 256 KiB each way
                chunk = bytes([i]) * 32768
                await a.send(RelayData(from_="peer1", relay_id=resp.relay_id, data=chunk))
                assert await b.expect(RelayData) == RelayData("peer1", resp.relay_id, chunk)
                await b.send(RelayData(from_="peer2", relay_id=resp.relay_id, data=chunk))
                assert await a.expect(RelayData) == RelayData("peer2", resp.relay_id, chunk)


async def test_nodes_with_different_windows_agree_on_the_smaller(tmp_path):
    from contextlib import AsyncExitStack

    from mesh_nodes import running_cluster_handle

    small, frame = 128 * 1024, 32 * 1024
    node_limits = [
        {"circuit_window": 512 * 1024},
        {"circuit_window": small, "circuit_max_data_frame": frame},
    ]
    with trio.fail_after(20):
        async with (
            running_cluster_handle(tmp_path, 2, node_limits=node_limits) as cluster,
            AsyncExitStack() as st,
        ):
            servers, locator = cluster.servers, cluster.locator
            for requester, target in ((0, 1), (1, 0)):
                a = await registered(st, servers[requester], locator, f"node{requester}")
                b = await registered(st, servers[target], locator, f"node{target}")
                await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
                resp = await a.expect(RelayResponse)
                announced = await b.expect(DataChannel)
                assert resp.limits == announced.limits
                assert (resp.limits.window, resp.limits.max_data_frame) == (small, frame)
                rid = uuid.UUID(resp.relay_id).bytes
                for _ in range(small // frame):  # exactly the agreed window: accepted
                    await a.send_data(rid, b"w" * frame)
                got = 0
                while got < small:
                    got += len((await b.expect(CircuitData)).payload)
                await b.send_credit(rid, small)
                assert await a.expect(CircuitCredit) == CircuitCredit(rid, small)


async def test_cross_node_ping_pong_is_written_directly_both_ways(tmp_path):
    """A 100-byte ping-pong across two nodes (bench_cluster's round trip): on both nodes
    every mesh frame is written by the task that received it (the link's writer task
    never starts, nothing is queued), and both ends of the link set TCP_NODELAY."""
    import socket
    from contextlib import AsyncExitStack

    with trio.fail_after(20):
        async with running_cluster(tmp_path, 2) as (servers, locator), AsyncExitStack() as st:
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            rid, _ = await open_cross(a, b)
            for i in range(100):
                payload = i.to_bytes(4, "big") * 25
                await a.send_data(rid, payload)
                assert await b.expect(CircuitData) == CircuitData(rid, payload)
                await b.send_data(rid, payload[::-1])
                assert await a.expect(CircuitData) == CircuitData(rid, payload[::-1])
            for server in servers:
                (link,) = server.mesh.links.links()
                assert link._writer._done is None, "a mesh frame waited for the writer task"
                assert len(link._writer.out) == 0
                sock = link.ws._stream.socket
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
