"""Links that survive (issue #9): real relay, real loopback PeerConnections, real breakage.

The direct path is killed for real (its UDP socket blackholed with
``testing.blackhole_direct_path``, or its data channel closed), the relay is killed
with ``server.shutdown()`` and restarted on the same port with the same key. Every
test is bounded with fail_after and prints the figures it measured (run with -s).
"""

from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import sdk_peers
import trio
import trio.testing

from darkswap_trio import (
    ConnectionDowngraded,
    ConnectionUpgraded,
    Keypair,
    LinkInterrupted,
    LinkRestored,
    PeerDisconnected,
)
from darkswap_trio.testing import blackhole_direct_path, running_relay

# Links outlive relay restarts here: the manager never gives up on the relay.
PATIENT = replace(sdk_peers.FAST, max_reconnect_attempts=1000)


def peer(relay, **p2p):
    return sdk_peers.peer(relay, relay_manager=PATIENT, **p2p)


class Recorder:
    """Collects a network's link events with their (trio clock) time."""

    def __init__(self, network):
        self.network = network
        self.events = []
        self.changed = trio.Event()

    async def run(self):
        async for event in self.network.events:
            self.events.append((trio.current_time(), event))
            self.changed.set()
            self.changed = trio.Event()

    async def caught_up(self):
        """Wait until every event queued so far is recorded (times are arrival times)."""
        while self.network.events.statistics().current_buffer_used:
            await trio.lowlevel.checkpoint()
        # An event handed straight to the waiting recorder is not in the buffer: let
        # every task (the recorder too) run until it blocks.
        await trio.testing.wait_all_tasks_blocked()

    def of(self, kind, after=-1.0):
        return [(t, e) for t, e in self.events if isinstance(e, kind) and t > after]

    async def wait_for(self, kind, count=1, *, after=-1.0):
        """The ``count``-th event of ``kind`` recorded after time ``after``."""
        while len(self.of(kind, after)) < count:
            await self.changed.wait()
        return self.of(kind, after)[count - 1]


class Stream:
    """A numbered message stream over a link, with arrival times on the receiving side."""

    def __init__(self, sender, receiver, size=1000):
        self.sender, self.receiver, self.size = sender, receiver, size
        self.sent = 0
        self.received = []
        self.times = []
        self.stop = False

    def message(self, i):
        return b"%08d" % i + bytes([i % 251]) * (self.size - 8)

    async def send(self):
        while not self.stop:
            await self.sender.send(self.message(self.sent))
            self.sent += 1
            await trio.sleep(0.002)
        await self.sender.send(b"end")

    async def receive(self):
        while (message := await self.receiver.receive()) != b"end":
            self.received.append(message)
            self.times.append(trio.current_time())

    def check_exactly_once_in_order(self):
        assert len(self.received) == self.sent
        for i, message in enumerate(self.received):
            assert message == self.message(i), f"message {i} wrong"

    def stall_after(self, when):
        """The longest gap between two arrivals from ``when`` (the kill) on: the downgrade's
        stall, and the re-upgrade's, whichever is longer."""
        times = [when] + [t for t in self.times if t > when]
        return max(later - earlier for earlier, later in zip(times, times[1:], strict=False))


@asynccontextmanager
async def linked_direct(relay, **p2p):
    async with peer(relay, **p2p) as a, peer(relay, **p2p) as b:
        link = await a.connect_to_peer(b.local_peer_id)
        incoming = await b.accept_peer()
        await link.wait_direct()
        await incoming.wait_direct()
        yield a, b, link, incoming


@pytest.mark.parametrize("kill", ["blackhole", "close_data_channel"])
async def test_direct_path_dies_mid_stream_then_comes_back(relay_server, kill):
    with trio.fail_after(40):
        async with linked_direct(relay_server) as (a, b, link, incoming):
            rec_a, rec_b = Recorder(a), Recorder(b)
            ab, ba = Stream(link, incoming), Stream(incoming, link)
            async with trio.open_nursery() as nursery:
                for task in (rec_a.run, rec_b.run, ab.send, ab.receive, ba.send, ba.receive):
                    nursery.start_soon(task)
                while ab.sent < 200 or ba.sent < 200:
                    await trio.sleep(0.01)
                await rec_a.caught_up()
                await rec_b.caught_up()
                killed_at = trio.current_time()
                if kill == "blackhole":
                    blackhole_direct_path(link)
                    blackhole_direct_path(incoming)
                else:
                    await link.direct.channel.aclose()
                downgraded_at, event = await rec_a.wait_for(ConnectionDowngraded)
                assert event.peer_id == b.local_peer_id
                await rec_b.wait_for(ConnectionDowngraded)
                assert link.connection_type == incoming.connection_type == "relay"
                sent_at_downgrade = (ab.sent, ba.sent)
                while ab.sent < sent_at_downgrade[0] + 100 or ba.sent < sent_at_downgrade[1] + 100:
                    await trio.sleep(0.01)
                # The direct path comes back (a fresh PeerConnection; the lower PeerId dials).
                upgraded_at, _ = await rec_a.wait_for(ConnectionUpgraded, after=killed_at)
                await rec_b.wait_for(ConnectionUpgraded, after=killed_at)
                await link.wait_direct()
                await incoming.wait_direct()
                sent_at_upgrade = (ab.sent, ba.sent)
                while ab.sent < sent_at_upgrade[0] + 100 or ba.sent < sent_at_upgrade[1] + 100:
                    await trio.sleep(0.01)
                ab.stop = ba.stop = True
                while len(ab.received) < ab.sent or len(ba.received) < ba.sent:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            ab.check_exactly_once_in_order()
            ba.check_exactly_once_in_order()
            detection = downgraded_at - killed_at
            stall = max(ab.stall_after(killed_at), ba.stall_after(killed_at))
            print(
                f"\n[{kill}] detection {detection:.2f} s, stall {stall:.2f} s, "
                f"re-upgrade after {upgraded_at - downgraded_at:.2f} s, "
                f"{ab.sent}+{ba.sent} messages, stats {link.statistics()}"
            )
            assert stall < 5.0
            for side in (link, incoming):
                stats = side.statistics()
                assert stats.downgrades == 1 and stats.upgrades >= 1
            assert (
                link.statistics().fragments_retransmitted
                + incoming.statistics().fragments_retransmitted
                > 0
            )
            for rec in (rec_a, rec_b):
                assert not rec.of(PeerDisconnected) and not rec.of(LinkInterrupted)


async def test_idle_link_notices_a_dead_direct_path(relay_server):
    with trio.fail_after(20):
        async with linked_direct(relay_server) as (a, b, link, incoming):
            rec_a = Recorder(a)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rec_a.run)
                killed_at = trio.current_time()
                blackhole_direct_path(link)
                blackhole_direct_path(incoming)
                downgraded_at, _ = await rec_a.wait_for(ConnectionDowngraded)
                print(f"\n[idle] detection {downgraded_at - killed_at:.2f} s")
                assert downgraded_at - killed_at <= 3.0 + 1.0  # path_timeout, plus one ping
                await link.send(b"still here")
                assert await incoming.receive() == b"still here"
                nursery.cancel_scope.cancel()


async def test_relay_killed_while_direct_links_keep_working():
    keypair = Keypair.generate()
    with trio.fail_after(30):
        async with running_relay(keypair=keypair) as server:
            async with linked_direct(server) as (a, b, link, incoming):
                rec_a, rec_b = Recorder(a), Recorder(b)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(rec_a.run)
                    nursery.start_soon(rec_b.run)
                    await server.shutdown(0.5)
                    # The relay is gone; the direct link carries on, message after message.
                    for i in range(50):
                        await link.send(b"a%d" % i)
                        assert await incoming.receive() == b"a%d" % i
                        await incoming.send(b"b%d" % i)
                        assert await link.receive() == b"b%d" % i
                        await trio.sleep(0.05)
                    assert link.connection_type == incoming.connection_type == "direct"
                    for rec in (rec_a, rec_b):
                        for kind in (ConnectionDowngraded, LinkInterrupted, PeerDisconnected):
                            assert not rec.of(kind)
                    assert not link.closed and not incoming.closed
                    nursery.cancel_scope.cancel()


async def test_relay_killed_while_relayed_link_recovers_after_restart():
    keypair = Keypair.generate()
    with trio.fail_after(40):
        async with running_relay(keypair=keypair) as server:
            port = server.signaling_port
            async with peer(server) as a, peer(server, enable_direct=False) as b:
                link = await a.connect_to_peer(b.local_peer_id)
                incoming = await b.accept_peer()
                assert link.connection_type == "relay"
                await link.send(b"before")
                assert await incoming.receive() == b"before"
                rec_a, rec_b = Recorder(a), Recorder(b)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(rec_a.run)
                    nursery.start_soon(rec_b.run)
                    await server.shutdown(0.5)
                    _, interrupted = await rec_a.wait_for(LinkInterrupted)
                    await rec_b.wait_for(LinkInterrupted)
                    assert interrupted.peer_id == b.local_peer_id
                    # Clear about what went: the relay, not the peer.
                    assert "relay" in interrupted.reason and "far side" not in interrupted.reason
                    print(f"\n[relay shutdown] LinkInterrupted reason: {interrupted.reason!r}")
                    # Sends during the outage are kept (within the window) and delivered later.
                    for i in range(20):
                        await link.send(b"during %d" % i)
                    await trio.sleep(2)
                    async with running_relay(port=port, keypair=keypair):
                        restarted_at = trio.current_time()
                        for i in range(20):
                            assert await incoming.receive() == b"during %d" % i
                        reopened_at = trio.current_time()
                        await rec_a.wait_for(LinkRestored)
                        await rec_b.wait_for(LinkRestored)
                        await incoming.send(b"after")
                        assert await link.receive() == b"after"
                        print(
                            f"\n[relay restart] link re-opened {reopened_at - restarted_at:.2f} s "
                            "after the relay came back"
                        )
                        assert reopened_at - restarted_at < 10
                        assert not link.closed and not incoming.closed
                        for rec in (rec_a, rec_b):
                            assert not rec.of(PeerDisconnected)
                        nursery.cancel_scope.cancel()


async def test_link_without_a_path_ends_after_the_recovery_timeout():
    keypair = Keypair.generate()
    with trio.fail_after(30):
        async with running_relay(keypair=keypair) as server:
            async with (
                peer(server, link_recovery_timeout=2) as a,
                peer(server, enable_direct=False) as b,
            ):
                link = await a.connect_to_peer(b.local_peer_id)
                await b.accept_peer()
                rec_a = Recorder(a)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(rec_a.run)
                    await server.shutdown(0.5)
                    started = trio.current_time()
                    with pytest.raises(trio.BrokenResourceError):
                        for _ in range(10_000):  # fills the window, then waits, then breaks
                            await link.send(b"x" * 1000)
                    assert trio.current_time() - started < 5
                    _, gone = await rec_a.wait_for(PeerDisconnected)
                    assert "no path" in gone.reason
                    assert link.closed
                    nursery.cancel_scope.cancel()


async def test_circuits_opened_by_both_sides_at_once_converge_on_one(relay_server):
    """Both sides reopen a circuit for the same link at the same moment: of the two,
    both keep the one opened by the lower PeerId and close the other."""
    with trio.fail_after(20):
        async with peer(relay_server) as a, peer(relay_server, enable_direct=False) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            first = link.circuit

            async def reopen(network, side):
                circuit = await network.relay_manager.open_circuit(side.peer_id)
                await circuit.send(side.hello)
                if not network._bind_relay(side, circuit):
                    await circuit.aclose()
                return circuit

            results = {}

            async def run(name, network, side):
                results[name] = await reopen(network, side)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "a", a, link)
                nursery.start_soon(run, "b", b, incoming)
            lower = "a" if a.local_peer_id < b.local_peer_id else "b"
            winner = results[lower].relay_id
            loser = results["b" if lower == "a" else "a"]
            # The paths a link drops are closed by a task of their own: wait for that too.
            while (
                link.circuit.relay_id != winner
                or incoming.circuit.relay_id != winner
                or not first.closed
                or not loser.closed
            ):
                await trio.sleep(0.01)
            for i in range(20):
                await link.send(b"%d" % i)
                assert await incoming.receive() == b"%d" % i
            assert link.circuit.relay_id == incoming.circuit.relay_id == winner
            assert not link.closed and not incoming.closed


async def test_direct_retries_with_backoff_until_the_path_is_back(relay_server):
    """After a downgrade the lower PeerId retries direct (2 s, then 4 s, ...); while the
    far side refuses new direct connections (its transport is full) the link stays
    relayed and keeps working, and it upgrades once the far side accepts again."""
    with trio.fail_after(30):
        async with linked_direct(relay_server, direct_connect_timeout=1) as (a, b, link, incoming):
            lower, higher = (a, b) if a.local_peer_id < b.local_peer_id else (b, a)
            rec = Recorder(lower)
            full = list(higher._transports)
            for transport in full:
                transport.max_connections = 0  # answers no offer: the direct path is "down"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rec.run)
                await rec.caught_up()
                killed_at = trio.current_time()
                await link.direct.channel.aclose()
                await rec.wait_for(ConnectionDowngraded, after=killed_at)
                with trio.move_on_after(4):  # the first retry (after 2 s) fails
                    await rec.wait_for(ConnectionUpgraded, after=killed_at)
                    raise AssertionError("upgraded while the far side refused")
                for i in range(10):
                    await link.send(b"relayed %d" % i)
                    assert await incoming.receive() == b"relayed %d" % i
                assert link.connection_type == "relay"
                for transport in full:
                    transport.max_connections = 64  # the path is back
                restored_at = trio.current_time()
                upgraded_at, _ = await rec.wait_for(ConnectionUpgraded, after=killed_at)
                await link.wait_direct()
                await incoming.wait_direct()
                print(
                    f"\n[retry] downgrade at +{rec.of(ConnectionDowngraded)[0][0] - killed_at:.2f} s, "
                    f"upgraded {upgraded_at - restored_at:.2f} s after the path was back"
                )
                await link.send(b"direct again")
                assert await incoming.receive() == b"direct again"
                nursery.cancel_scope.cancel()
