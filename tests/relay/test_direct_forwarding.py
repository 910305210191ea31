"""Frames are forwarded by the task that received them when nothing waits before them,
and queued otherwise: either way each session's wire keeps the order of events
(DataChannel before a circuit's first data, data in order, CloseRelay after the last),
DATA frames arrive byte-identical, and buffered_bytes stays bounded and returns to 0."""

from __future__ import annotations

import uuid

import trio
import trio.testing
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.signaling import (
    CircuitCredit,
    CircuitData,
    CloseRelay,
    DataChannel,
    RelayRequest,
    RelayResponse,
    encode_circuit_data,
)
from relay import serve_relay

FRAME = 64 * 1024
SLACK = 1024  # frame headers and small control frames


async def test_order_and_bound_when_the_receiver_reads_late(nursery):
    with trio.fail_after(20):
        # A window larger than the kernel's socket buffers: the first frames are written
        # directly, the rest queue behind them (and a tail may be held in between).
        window = 8 << 20
        server = await nursery.start(serve_relay, make_config(circuit_window=window))
        async with connect(server) as sender, connect(server) as late:
            await sender.register_extended(new_peer(), server.peer_id, open_mode=True)
            await late.register_extended(new_peer(), server.peer_id, open_mode=True)
            await sender.send(RelayRequest(from_=sender.peer_id, to=late.peer_id))
            resp = await sender.expect(RelayResponse)
            rid = uuid.UUID(resp.relay_id).bytes
            frames = window // FRAME
            peak = 0
            for i in range(frames):
                await sender.send_data(rid, i.to_bytes(4, "big") * (FRAME // 4))
                peak = max(peak, server.statistics().buffered_bytes)
            await sender.send(CloseRelay(relay_id=resp.relay_id))
            await sender.expect(CloseRelay)
            peak = max(peak, server.statistics().buffered_bytes)
            assert peak > 0, "the late reader's frames had to wait inside the relay"
            assert peak <= window + FRAME + SLACK
            # Only now does the receiver read: everything, in order.
            opened = await late.expect(DataChannel)
            assert opened.relay_id == resp.relay_id and opened.peer_id == sender.peer_id
            for i in range(frames):
                raw = await late.ws.receive()
                assert raw == encode_circuit_data(rid, i.to_bytes(4, "big") * (FRAME // 4))
            closed = await late.expect(CloseRelay)
            assert closed.relay_id == resp.relay_id
            await trio.testing.wait_all_tasks_blocked()  # the writer has noted every write
            assert server.statistics().buffered_bytes == 0
        await server.shutdown(1)


async def test_ping_pong_circuit_is_forwarded_in_order(nursery):
    """A reader that keeps up: every frame takes the direct path (nothing queues)."""
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, make_config())
        async with connect(server) as a, connect(server) as b:
            await a.register_extended(new_peer(), server.peer_id, open_mode=True)
            await b.register_extended(new_peer(), server.peer_id, open_mode=True)
            await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
            resp = await a.expect(RelayResponse)
            await b.expect(DataChannel)
            rid = uuid.UUID(resp.relay_id).bytes
            for i in range(200):
                payload = i.to_bytes(2, "big") * 50
                await a.send_data(rid, payload)
                got = await b.expect(CircuitData)
                assert got == CircuitData(rid, payload)
                await b.send_data(rid, payload[::-1])
                back = await a.expect(CircuitData)
                assert back == CircuitData(rid, payload[::-1])
                await b.send_credit(rid, len(payload))
                assert await a.expect(CircuitCredit) == CircuitCredit(rid, len(payload))
                await a.send_credit(rid, len(payload))
                assert await b.expect(CircuitCredit) == CircuitCredit(rid, len(payload))
            assert server.statistics().buffered_bytes == 0
        await server.shutdown(1)
