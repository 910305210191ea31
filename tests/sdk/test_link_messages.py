"""One message-size contract on both paths of a PeerLink (issue #8), against a real relay.

256 KiB and 1 MiB messages arrive intact on a relayed link (relay frames are at most
``circuit_max_data_frame``, 64 KiB by default), on a direct link, and while the link
switches from relay to direct; a message above the link's maximum is refused with the
same exception on both paths, before anything is sent.
"""

import hashlib
import os

import pytest
import trio
from sdk_peers import peer

from darkswap_trio import MessageTooLarge

KIB = 1024
MIB = 1024 * KIB


def payload(size, seed):
    """Distinct, non-repeating content, so a misplaced fragment cannot go unnoticed."""
    block = hashlib.sha256(b"%d" % seed).digest()
    tag = seed.to_bytes(4, "big")
    return ((block * (size // len(block) + 1))[: max(size - 4, 0)] + tag)[-size:] if size else b""


async def both_ways(link_a, link_b, sizes):
    """Send messages of ``sizes`` a->b and b->a at the same time; check each one intact."""

    async def send_all(link, base):
        for i, size in enumerate(sizes):
            await link.send(payload(size, base + i))

    async def receive_all(link, base):
        for i, size in enumerate(sizes):
            message = await link.receive()
            assert len(message) == size and message == payload(size, base + i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all, link_a, 0)
        nursery.start_soon(send_all, link_b, 1000)
        nursery.start_soon(receive_all, link_b, 0)
        nursery.start_soon(receive_all, link_a, 1000)


SIZES = [256 * KIB, MIB, 1, 0, MIB, 256 * KIB + 7]


async def test_large_messages_on_a_relayed_link(relay_server):
    with trio.fail_after(30):
        async with peer(relay_server) as a, peer(relay_server, enable_direct=False) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            assert link.connection_type == incoming.connection_type == "relay"
            assert link.circuit.limits.max_data_frame < 256 * KIB  # fragmentation is needed
            await both_ways(link, incoming, SIZES)
            assert link.connection_type == "relay"
            assert link.statistics().fragments_sent > len(SIZES)


async def test_large_messages_on_a_direct_link(relay_server):
    with trio.fail_after(30):
        async with peer(relay_server) as a, peer(relay_server) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            await link.wait_direct()
            await incoming.wait_direct()
            await both_ways(link, incoming, SIZES)
            assert link.connection_type == incoming.connection_type == "direct"


async def test_large_messages_across_the_switch_to_direct(relay_server):
    with trio.fail_after(40):
        async with peer(relay_server, direct_delay=3600) as a, peer(relay_server) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            assert link.connection_type == "relay"
            sizes = [MIB, 256 * KIB] * 6
            async with trio.open_nursery() as nursery:
                nursery.start_soon(both_ways, link, incoming, sizes)
                await trio.sleep(0)
                assert await a.upgrade_to_direct(b.local_peer_id)
            for side in (link, incoming):
                assert side.upgraded and side.connection_type == "direct"
            # The switch happened mid-stream: some bytes went each way on each path.
            assert link.relay_bytes_sent > 0 and link.direct_bytes_sent > 0
            await both_ways(link, incoming, [MIB])


@pytest.mark.parametrize("path", ["relay", "direct"])
async def test_oversize_message_refused_alike_on_both_paths(relay_server, path):
    with trio.fail_after(20):
        async with (
            peer(relay_server) as a,
            peer(relay_server, enable_direct=(path == "direct")) as b,
        ):
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            if path == "direct":
                await link.wait_direct()
                await incoming.wait_direct()
            assert link.connection_type == path
            assert link.max_message_size == incoming.max_message_size == MIB
            before = link.statistics().fragments_sent
            with pytest.raises(MessageTooLarge):
                await link.send(os.urandom(MIB + 1))
            with pytest.raises(MessageTooLarge):
                await incoming.send(b"x" * (4 * MIB))
            assert issubclass(MessageTooLarge, ValueError)
            assert link.statistics().fragments_sent == before  # refused before sending
            # The biggest allowed message still goes through, and the link still works.
            await both_ways(link, incoming, [MIB])


async def test_max_message_size_is_configurable(relay_server):
    with trio.fail_after(20):
        async with (
            peer(relay_server, link_max_message_size=3 * MIB, link_window=8 * MIB) as a,
            peer(
                relay_server,
                link_max_message_size=3 * MIB,
                link_window=8 * MIB,
                enable_direct=False,
            ) as b,
        ):
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            await both_ways(link, incoming, [3 * MIB])
            with pytest.raises(MessageTooLarge):
                await link.send(b"x" * (3 * MIB + 1))


@pytest.mark.parametrize("enable_direct", [True, False])
async def test_peers_dialing_each_other_at_once_share_one_link(relay_server, enable_direct):
    with trio.fail_after(20):
        async with (
            peer(relay_server, enable_direct=enable_direct) as a,
            peer(relay_server, enable_direct=enable_direct) as b,
        ):
            links = {}

            async def dial(name, network, other):
                links[name] = await network.connect_to_peer(other.local_peer_id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial, "a", a, b)
                nursery.start_soon(dial, "b", b, a)
            assert a.link(b.local_peer_id) is links["a"] and b.link(a.local_peer_id) is links["b"]
            await both_ways(links["a"], links["b"], [1000, 256 * KIB])
            # Each side knows the other's link id (from the far side's HELLO).
            assert links["a"].remote_link_id == links["b"].link_id
            assert links["b"].remote_link_id == links["a"].link_id
