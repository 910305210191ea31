"""VirtualNet itself: NAT filtering, the conntrack race, seeded determinism."""

from __future__ import annotations

import pytest
import trio

from darkswap_trio.testing import VirtualNet


@pytest.mark.parametrize("race", [False, True])
async def test_virtual_nat_conntrack_race_moves_the_mapping(race):
    """A's NAT sees B's packet before A sent to B; then A's packet to B leaves from...?

    Without the race (a router that drops unsolicited packets before conntrack) it
    leaves from A's usual public port; with it, from another port, and B's packets to
    the usual port never reach A (the router owns that tuple now).
    """
    net = VirtualNet(seed=1, delay=0.001)
    server = await net.bind(("198.51.100.1", 3478))
    nat_a = net.add_nat("203.0.113.1", "address-and-port-dependent", conntrack_race=race)
    nat_b = net.add_nat("203.0.113.2", "endpoint-independent")
    a = await nat_a.bind(("10.0.0.1", 5000))
    b = await nat_b.bind(("10.0.0.2", 6000))
    with trio.fail_after(5):
        await a.sendto(b"where am I", server.getsockname())
        _, usual = await server.recvfrom(100)
        await b.sendto(b"early", usual)  # filtered: A never sent to B
        await b.sendto(b"to B's mapping", server.getsockname())
        _, b_public = await server.recvfrom(100)
        await a.sendto(b"hello", b_public)
        data, seen = await b.recvfrom(100)
        assert data == b"hello"
        assert (seen != usual) is race
        await b.sendto(b"reply to the usual port", usual)
        await b.sendto(b"reply to what B saw", seen)
        got = {(await a.recvfrom(100))[0] for _ in range(1 if race else 2)}
    if race:
        assert got == {b"reply to what B saw"}
    else:
        assert got == {b"reply to the usual port", b"reply to what B saw"}


async def test_virtualnet_nat_filtering_and_determinism(autojump_clock):
    async def run(seed, loss=0.3):
        net = VirtualNet(seed=seed, loss=loss, duplicate=0.3, jitter=0.01)
        nat = net.add_nat("203.0.113.9")
        inside = await nat.bind(("192.168.0.2", 5000))
        outside = await net.bind(("198.51.100.7", 6000))
        stranger = await net.bind(("198.51.100.8", 6000))
        for i in range(40):
            await inside.sendto(b"%d" % i, ("198.51.100.7", 6000))
        public = nat.mapping(("192.168.0.2", 5000))
        # Unsolicited traffic from a stranger is filtered; the contacted peer gets in.
        await stranger.sendto(b"x", public)
        await outside.sendto(b"reply", public)
        got = []
        with trio.move_on_after(0.1):
            while True:
                data, source = await outside.recvfrom(100)
                assert source == public
                got.append(data)
        return got, net.statistics()

    first, stats = await run(5)
    assert stats.lost > 0 and stats.duplicated > 0
    assert (await run(5, loss=0.0))[1].dropped_by_nat == 1
    assert (await run(5))[0] == first  # same seed, same fate for every datagram
    assert (await run(6))[0] != first
