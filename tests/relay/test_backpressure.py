"""A peer that stops reading: its sender is slowed by credit, the relay's buffers stay
bounded, and the circuit is closed as stalled (both ends told). Mock time (autojump):
the relay's stall timer is the only thing that makes time pass."""

from __future__ import annotations

import uuid

import trio
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.signaling import (
    CircuitData,
    CloseRelay,
    DataChannel,
    Error,
    Offer,
    RelayData,
    RelayRequest,
    RelayResponse,
)
from relay import serve_relay

WINDOW = 256 * 1024
FRAME = 64 * 1024
STALL = 30.0
SLACK = 1024  # frame headers and small control frames queued for the silent peer


async def watch_buffer(server, stop: trio.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(server.statistics().buffered_bytes)
        with trio.move_on_after(0.5):  # mock time
            await stop.wait()


async def test_silent_extended_receiver_stalls_legacy_sender(nursery, autojump_clock):
    with trio.fail_after(1000):
        server = await nursery.start(
            serve_relay, make_config(circuit_stall_timeout=STALL, circuit_window=WINDOW)
        )
        async with connect(server) as sender, connect(server) as silent:
            await sender.register_legacy(str(new_peer().peer_id))
            await silent.register_extended(new_peer(), server.peer_id, open_mode=True)
            # From here on `silent` reads nothing (and so returns no credit).
            await sender.send(RelayRequest(from_=sender.peer_id, to=silent.peer_id))
            resp = await sender.expect(RelayResponse)
            assert resp.accepted
            start = trio.current_time()
            closed = trio.Event()
            samples: list[int] = []
            sent = 0

            async def keep_sending():
                nonlocal sent
                payload = b"p" * FRAME
                while not closed.is_set():
                    await sender.send(
                        RelayData(from_=sender.peer_id, relay_id=resp.relay_id, data=payload)
                    )
                    sent += FRAME

            async with trio.open_nursery() as inner:
                inner.start_soon(keep_sending)
                inner.start_soon(watch_buffer, server, closed, samples)
                while True:
                    msg = await sender.recv()
                    if isinstance(msg, CloseRelay):
                        break
                    assert isinstance(msg, Error) and msg.code == "unknown_circuit", msg
                closed.set()
                inner.cancel_scope.cancel()
            assert msg == CloseRelay(resp.relay_id, "stalled")
            assert STALL <= trio.current_time() - start < STALL + 1
            # The sender kept trying, the relay took at most one window and held at most
            # a window plus the frame it stopped reading at.
            assert sent > WINDOW + FRAME
            relayed = server.metrics.value("darkswap_relay_relayed_bytes_total")
            assert relayed <= WINDOW
            assert len(samples) > 10 and max(samples) <= WINDOW + FRAME + SLACK
            assert server.statistics().circuits == 0

            # The silent peer, once it reads again, is told too (after what it was sent).
            assert (await silent.expect(DataChannel)).relay_id == resp.relay_id
            got = 0
            while True:
                msg = await silent.recv()
                if isinstance(msg, CloseRelay):
                    break
                assert isinstance(msg, CircuitData)
                got += len(msg.payload)
            assert msg == CloseRelay(resp.relay_id, "stalled")
            assert got <= relayed
            stall_hits = server.metrics.value(
                "darkswap_relay_limit_hits_total", {"limit": "circuit_stalled"}
            )
            assert stall_hits == 1
        assert server.statistics().buffered_bytes == 0
        await server.shutdown(1)


async def test_extended_sender_is_held_to_its_credit(nursery, autojump_clock):
    """An extended sender that respects credit is simply stopped; the relay holds at most
    a window for the silent legacy receiver and closes the circuit as stalled."""
    with trio.fail_after(1000):
        window = 4 << 20  # larger than the kernel's socket buffers: the relay queue fills
        config = make_config(circuit_stall_timeout=STALL, circuit_window=window)
        server = await nursery.start(serve_relay, config)
        async with connect(server) as sender, connect(server) as silent:
            await sender.register_extended(new_peer(), server.peer_id, open_mode=True)
            await silent.register_legacy(str(new_peer().peer_id))
            await sender.send(RelayRequest(from_=sender.peer_id, to=silent.peer_id))
            resp = await sender.expect(RelayResponse)
            rid = uuid.UUID(resp.relay_id).bytes
            balance = resp.limits.window
            start = trio.current_time()
            payload = b"q" * FRAME
            peak = 0
            while True:
                # Send whatever the credit allows, then wait for credit or the close.
                while balance >= FRAME:
                    await sender.send_data(rid, payload)
                    balance -= FRAME
                    peak = max(peak, server.statistics().buffered_bytes)
                msg = await sender.recv()
                peak = max(peak, server.statistics().buffered_bytes)
                if isinstance(msg, CloseRelay):
                    break
                balance += msg.increment  # the relay credits as it writes to the legacy peer
            assert msg == CloseRelay(resp.relay_id, "stalled")
            assert trio.current_time() - start >= STALL
            assert balance < FRAME  # the sender was blocked by credit when the stall hit
            assert peak <= window + FRAME + SLACK
        await server.shutdown(1)


async def test_peer_that_never_reads_signaling_is_closed_as_stalled(nursery, autojump_clock):
    """Signaling sent to a peer that does not read fills a bounded queue, then that peer
    is disconnected; the sender is never blocked and the relay's memory stays bounded."""
    with trio.fail_after(1000):
        config = make_config(messages_per_peer_rate=0, bytes_per_peer_rate=0)
        server = await nursery.start(serve_relay, config)
        async with connect(server) as talker, connect(server) as mute:
            await talker.register_legacy(str(new_peer().peer_id))
            await mute.register_legacy(str(new_peer().peer_id))
            sdp = "a=x\r\n" * 10_000  # 50 KB per Offer
            peak = 0
            sent = 0
            while True:
                await talker.send(Offer(from_=talker.peer_id, to=mute.peer_id, sdp=sdp))
                sent += 1
                peak = max(peak, server.statistics().buffered_bytes)
                if server.statistics().registered_peers == 1:
                    break
                assert sent < 10_000
            # The mute peer's session is gone; the talker is told it is unknown now.
            await talker.send(Offer(from_=talker.peer_id, to=mute.peer_id, sdp="x"))
            await talker.expect_error("unknown_peer")
            assert peak <= (1 << 20) + 64 * 1024
            hits = server.metrics.value("darkswap_relay_limit_hits_total", {"limit": "send_queue"})
            assert hits == 1
        await server.shutdown(1)
