"""ConnectionPool with real links over a real relay: cap + LRU, replacement, idle pruning."""

from contextlib import AsyncExitStack

import pytest
import sdk_peers
import trio
from sdk_peers import FAST

from darkswap_trio import RelayManagerConfig
from darkswap_trio._p2p._pool import ConnectionPool


def peer(relay, manager=None, **p2p):
    return sdk_peers.peer(relay, relay_manager=manager or FAST, **p2p)


async def linked(a, b):
    """A link a->b and b's end of it, with one message through to prove it works."""
    link = await a.connect_to_peer(b.local_peer_id)
    incoming = await b.accept_peer()
    await link.send(b"hi")
    assert await incoming.receive() == b"hi"
    return link, incoming


async def test_cap_evicts_least_recently_used(relay_server):
    with trio.fail_after(15):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                peer(relay_server, enable_direct=False, max_connections=2)
            )
            b, c, d = [
                await stack.enter_async_context(peer(relay_server, enable_direct=False))
                for _ in range(3)
            ]
            link_b, far_b = await linked(a, b)
            link_c, far_c = await linked(a, c)
            assert len(a.pool) == 2
            await link_b.send(b"b is busy")  # c is now the least recently used
            assert await far_b.receive() == b"b is busy"
            link_d, far_d = await linked(a, d)
            assert len(a.pool) == 2  # never above the cap
            assert link_c.closed and not link_b.closed and not link_d.closed
            assert sorted(a.connected_peers) == sorted([b.local_peer_id, d.local_peer_id])
            with pytest.raises(trio.EndOfChannel):
                await far_c.receive()  # the evicted link is closed at the far end too
            with pytest.raises(KeyError):
                a.link(c.local_peer_id)
            stats = a.pool.statistics()
            assert (stats.connections, stats.relay, stats.direct, stats.evicted) == (2, 2, 0, 1)
            assert stats.max_connections == 2


async def test_direct_link_replaces_relay_link(relay_server):
    with trio.fail_after(15):
        async with (
            peer(relay_server, enable_direct=False) as relayed,
            peer(relay_server) as direct,
            peer(relay_server) as target,
        ):
            relay_link, _ = await linked(relayed, target)
            direct_link, _ = await linked(direct, target)
            await direct_link.wait_direct()
            assert relay_link.connection_type == "relay"
            pool = ConnectionPool(max_connections=4, idle_timeout=60)
            assert await pool.add(relay_link) is relay_link
            assert await pool.add(direct_link) is direct_link
            assert relay_link.closed and pool.get(target.local_peer_id) is direct_link
            # A relay link never displaces a direct one: the newcomer is closed instead.
            second_relay, _ = await linked(relayed, target)
            assert await pool.add(second_relay) is direct_link
            assert second_relay.closed and not direct_link.closed
            assert pool.statistics().replaced == 2 and pool.statistics().direct == 1


async def test_idle_links_are_pruned(relay_server):
    with trio.fail_after(15):
        async with (
            peer(relay_server, enable_direct=False, connection_idle_timeout=60) as a,
            peer(relay_server, enable_direct=False) as b,
        ):
            link, far = await linked(a, b)
            # Not idle yet: nothing goes.
            assert await a.pool.prune_idle(link.last_activity + 59) == []
            await link.send(b"activity")  # moves last_activity forward
            assert await far.receive() == b"activity"
            assert await a.pool.prune_idle(link.last_activity + 59) == []
            assert await a.pool.prune_idle(link.last_activity + 61) == [link]
            assert link.closed and len(a.pool) == 0 and a.pool.statistics().pruned_idle == 1
            with pytest.raises(trio.EndOfChannel):
                await far.receive()


async def test_background_pruner_with_mock_clock(relay_server, autojump_clock):
    # The relay and both peers run in the same (autojumping) clock: the pruner wakes
    # every idle_timeout / 4 of virtual time. Pings are pushed far beyond the test so
    # that no other timer (a Pong awaited while the clock jumps) can end the link.
    quiet = RelayManagerConfig(connection_timeout=500, ping_interval=1000)
    with trio.fail_after(300):  # virtual seconds
        async with (
            peer(relay_server, quiet, enable_direct=False, connection_idle_timeout=40) as a,
            peer(relay_server, quiet, enable_direct=False) as b,
        ):
            link, far = await linked(a, b)
            with pytest.raises(trio.EndOfChannel):
                await far.receive()  # returns once a's pruner closed the idle link
            assert link.closed and a.pool.statistics().pruned_idle == 1
            assert trio.current_time() - link.last_activity > 40
