"""P2PNetwork direct-first links against a real relay: happy eyeballs, fallback, upgrade.

Peers use loopback-only ICE candidates. Each test is bounded with fail_after; timing
is never asserted (the upgrade test loops until the switch is seen, whatever it takes).
"""

import pytest
import trio
from sdk_peers import peer

from darkswap_trio import DataReceived
from darkswap_trio._p2p._network import PeerUnreachable
from darkswap_trio._p2p._network_events import ConnectionUpgraded


async def next_event(events, kind):
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"events ended before a {kind.__name__}")


async def exchange(link_a, link_b, messages):
    """Send ``messages`` a->b and echo them back b->a; assert both arrive in order."""
    for message in messages:
        await link_a.send(message)
        assert await link_b.receive() == message
        await link_b.send(message[::-1])
        assert await link_a.receive() == message[::-1]


async def test_connect_to_peer_ends_up_direct(relay_server):
    with trio.fail_after(15):
        async with peer(relay_server) as a, peer(relay_server) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            assert incoming.peer_id == a.local_peer_id
            await link.wait_direct()
            await incoming.wait_direct()
            await exchange(link, incoming, [b"hello", b"x" * 3000, b"\x00\x01"])
            assert link.connection_type == incoming.connection_type == "direct"
            assert a.link(b.local_peer_id) is link
            assert b.link(a.local_peer_id) is incoming
            await a.send_to_peer(b.local_peer_id, b"via send_to_peer")
            assert await incoming.receive() == b"via send_to_peer"
            assert a.connected_peers == [b.local_peer_id]
            # Closing one end ends the other's receive.
            await link.aclose()
            with pytest.raises(trio.EndOfChannel):
                await incoming.receive()


async def test_falls_back_to_relay_without_direct(relay_server):
    with trio.fail_after(15):
        async with peer(relay_server) as a, peer(relay_server, enable_direct=False) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            assert link.connection_type == "relay"
            incoming = await b.accept_peer()
            assert incoming.connection_type == "relay"
            await exchange(link, incoming, [b"one", b"two", b"y" * 1000])
            assert link.connection_type == "relay" and not link.upgraded
            metrics = link.metrics()
            assert metrics.relay_bytes_sent == metrics.bytes_sent == 6 + 1000
            assert metrics.direct_bytes_sent == 0


async def test_unreachable_peer_raises(relay_server):
    with trio.fail_after(15):
        async with peer(relay_server, direct_connect_timeout=0.3) as a:
            from darkswap_trio import Keypair

            with pytest.raises(PeerUnreachable):
                await a.connect_to_peer(str(Keypair.generate().peer_id))


async def test_guide_relay_api_still_delivers_data_received(relay_server):
    with trio.fail_after(15):
        async with peer(relay_server) as a, peer(relay_server) as b:
            relay_id = await a.connect_via_relay(b.local_peer_id)
            await a.send_via_relay(b.local_peer_id, relay_id, b"plain")
            event = await next_event(b.events, DataReceived)
            assert (event.peer_id, event.data) == (a.local_peer_id, b"plain")


async def stream_across_switch(sender_net, link, count_after_switch=200):
    """Send numbered messages until the link is direct, then ``count_after_switch`` more."""
    n = 0
    while link.connection_type == "relay" or count_after_switch > 0:
        if link.connection_type == "direct":
            count_after_switch -= 1
        await link.send(b"%08d" % n)
        n += 1
        await trio.lowlevel.checkpoint()
    await link.send(b"end")
    return n


async def collect(link):
    received = []
    while (message := await link.receive()) != b"end":
        received.append(message)
    return received


@pytest.mark.parametrize("trigger", ["happy_eyeballs_delay", "explicit_upgrade"])
async def test_relay_first_then_upgrade_exactly_once_in_order(relay_server, trigger):
    with trio.fail_after(20):
        delay = 0.5 if trigger == "happy_eyeballs_delay" else 3600.0
        async with peer(relay_server, direct_delay=delay) as a, peer(relay_server) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            assert link.connection_type == "relay"  # the direct attempt is held back
            incoming = await b.accept_peer()
            results = {}

            async def run(name, coro, *args):
                results[name] = await coro(*args)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "a_sent", stream_across_switch, a, link)
                nursery.start_soon(run, "b_got", collect, incoming)
                nursery.start_soon(run, "b_sent", stream_across_switch, b, incoming)
                nursery.start_soon(run, "a_got", collect, link)
                if trigger == "explicit_upgrade":
                    assert await a.upgrade_to_direct(b.local_peer_id)
            assert results["b_got"] == [b"%08d" % i for i in range(results["a_sent"])]
            assert results["a_got"] == [b"%08d" % i for i in range(results["b_sent"])]
            # Both directions really straddled the switch.
            for side in (link, incoming):
                assert side.upgraded and side.connection_type == "direct"
                assert side.relay_bytes_sent > 0 and side.direct_bytes_sent > 0
            await next_event(a.events, ConnectionUpgraded)
            # The relay circuit is retired once both sides switched.
            with trio.fail_after(5):
                while not (link.circuit.closed and incoming.circuit.closed):
                    await trio.sleep(0.01)
            await exchange(link, incoming, [b"after"])


async def test_metrics_follow_traffic(relay_server):
    with trio.fail_after(15):
        async with peer(relay_server) as a, peer(relay_server) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            await link.wait_direct()
            await incoming.wait_direct()
            payloads = [b"a" * 100, b"b" * 2000, b"c"]
            await exchange(link, incoming, payloads)
            sent = sum(len(p) for p in payloads)
            mine, theirs = a.metrics(b.local_peer_id), b.metrics(a.local_peer_id)
            assert mine.bytes_sent == mine.bytes_received == sent
            assert theirs.bytes_sent == theirs.bytes_received == sent
            assert mine.messages_sent == theirs.messages_received == len(payloads)
            assert mine.connection_type == "direct" and mine.retransmissions is not None
            assert mine.loss_rate is not None and 0 <= mine.loss_rate <= 1
            assert mine.rtt_ms is not None and mine.rtt_ms > 0
            assert mine.rtt_source in ("sctp-srtt", "sctp-heartbeat")
            assert mine.last_activity >= mine.established_at
        async with peer(relay_server) as a, peer(relay_server, enable_direct=False) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            await exchange(link, incoming, [b"r" * 10])
            relayed = link.metrics()
            assert relayed.connection_type == "relay" and relayed.rtt_source == "relay-ping"
            assert relayed.rtt_ms is not None and relayed.rtt_ms > 0
            assert relayed.retransmissions is None and relayed.bytes_received == 10
