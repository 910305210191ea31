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
