"""Cross-node circuits between in-process relay nodes over real loopback mesh links."""

from __future__ import annotations

import uuid

import trio
from cluster_nodes import running_cluster
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
            assert resp.limits.window == 256 * 1024
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
            data = bytes(i % 251 for i in range(total))
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
