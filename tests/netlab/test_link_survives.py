"""A live direct link whose path dies mid-stream falls back to the relay and comes back.

Port-restricted cone on both sides. While A streams numbered messages to B, A's router
starts dropping all UDP and forgets its NAT state (conntrack flushed); TCP to the
relay keeps working. Every message must arrive exactly once and in order (same
SHA-256 at both ends), the link must report ConnectionDowngraded, and once UDP is
allowed again it must go direct again (ConnectionUpgraded). The longest gap between
two messages at B is the stall the break caused.

This is the behaviour of the PeerLink fallback (relay circuit re-opened on a dead
direct path); before it, the link simply ended some 30 s later with every message
sent after the break lost.
"""

from __future__ import annotations

import time

import trio
from netlab_harness import RESULTS, lab_peers

STREAM = 300  # messages, one every 10 ms
# From the break to the link carrying data again over the relay.
FALLBACK_BOUND = 15.0
# From UDP being allowed again to the link being direct again.
REUPGRADE_BOUND = 30.0


async def wait_received(peer, count: int, timeout: float) -> dict:
    with trio.fail_after(timeout):
        while (stats := await peer.stats())["count"] < count:
            await trio.sleep(0.05)
    return stats


async def test_direct_path_dies_and_returns(internet, tmp_path):
    with trio.fail_after(120):
        sites = [internet.lab.add_site("port-restricted"), internet.lab.add_site("port-restricted")]
        async with lab_peers(internet, sites, tmp_path) as (a, b):
            await a.command("connect", peer=b.peer_id)
            await a.wait("direct", 10)
            await b.wait("direct", 10)
            await a.command("send", count=STREAM, interval=0.01, size=200)
            await wait_received(b, STREAM // 3, 20)
            mark = len(a.lines)
            broken_at = time.monotonic()  # the clock of the peers' "t" fields
            sites[0].block_udp()
            downgraded = await a.wait(
                "net", FALLBACK_BOUND, since=mark, kind="ConnectionDowngraded"
            )
            sent = await a.wait("sent", FALLBACK_BOUND + 30, count=STREAM)
            stats = await wait_received(b, STREAM, 30)
            assert stats == {
                **stats,
                "count": STREAM,
                "in_order": True,
                "duplicates": 0,
                "sha": sent["sha"],
            }
            assert stats["ended"] is None  # the link is still up
            mark, mark_b = len(a.lines), len(b.lines)
            restored = time.monotonic()
            sites[0].unblock_udp()
            upgraded = await a.wait("net", REUPGRADE_BOUND, since=mark, kind="ConnectionUpgraded")
            await b.wait("net", 10, since=mark_b, kind="ConnectionUpgraded")
            reupgrade = upgraded["t"] - restored
            await a.command("send", count=20, size=200)
            sent = await a.wait("sent", 10, count=STREAM + 20)
            stats = await wait_received(b, STREAM + 20, 10)
            assert stats["sha"] == sent["sha"] and stats["duplicates"] == 0
            assert stats["type"] == "direct"
    RESULTS.append(
        {
            "a": "port-restricted (break)",
            "b": "port-restricted",
            "outcome": "survived",
            # The longest gap between two messages at B: detection plus the circuit open.
            "stall_ms": round(stats["max_gap"] * 1000),
            # From the break to ConnectionDowngraded at A (the path declared dead).
            "downgrade_after_break_ms": round((downgraded["t"] - broken_at) * 1000),
            # From UDP allowed again to ConnectionUpgraded at A (the lower PeerId's retry
            # backoff, 2 s doubling, plus a fresh ICE and DTLS handshake).
            "reupgrade_after_restore_ms": round(reupgrade * 1000),
        }
    )
