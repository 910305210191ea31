"""The NAT matrix: SDK peers behind real nftables NATs, relay and STUN on the internet.

Each cell connects A to B with ``connect_to_peer`` and asserts the outcome (direct
within DIRECT_BOUND, or relay with the direct attempt given up within LINGER_BOUND),
that numbered messages arrive intact, once and in order (same SHA-256 at both ends),
and records time to first byte, time to direct and linger time (printed at the end
of the run).
"""

from __future__ import annotations

import pytest
import trio
from netlab_harness import RESULTS, lab_peers

from darkswap_trio import P2PConfig

# Time from connect_to_peer to the link sending directly, when the NATs allow it.
DIRECT_BOUND = 3.0
# The same with 5% UDP loss at each router (retransmission timers: ICE 0.5 s, DTLS 1 s).
LOSSY_DIRECT_BOUND = 10.0
# Time from connect_to_peer to the failed direct attempt being abandoned.
LINGER_BOUND = 8.0
# Time from connect_to_peer to the first message arriving (relay path: a round trip
# to the relay plus the circuit open, on a sub-millisecond network).
FIRST_BYTE_BOUND = 1.0

MATRIX = [
    ("full-cone", "full-cone", "direct"),
    ("full-cone", "address-restricted", "direct"),
    ("full-cone", "port-restricted", "direct"),
    ("full-cone", "symmetric", "direct"),
    ("address-restricted", "address-restricted", "direct"),
    ("address-restricted", "port-restricted", "direct"),
    ("address-restricted", "symmetric", "direct"),
    ("port-restricted", "port-restricted", "direct"),
    ("port-restricted", "symmetric", "relay"),
    ("symmetric", "symmetric", "relay"),
]


async def run_cell(
    internet,
    tmp_path,
    nat_a: str,
    nat_b: str,
    expected: str,
    loss: int = 0,
    linger_bound: float = LINGER_BOUND,
    **b_options,
) -> dict:
    sites = [internet.lab.add_site(nat_a), internet.lab.add_site(nat_b)]
    row: dict = {"a": nat_a, "b": nat_b}
    if loss:
        for site in sites:
            site.set_loss(loss)
        row["udp_loss_per_router"] = f"{loss}%"
    row.update(b_options)
    async with lab_peers(internet, sites, tmp_path, per_peer=[{}, b_options]) as (a, b):
        await a.command("connect", peer=b.peer_id)
        link = await a.wait("link", 15)
        start = link["start"]
        await a.command("send", count=20, size=1000)
        first = await b.wait("first_byte", 10)
        row["ttfb"] = first["t"] - start
        row["first_path"] = link["type"]
        if expected == "direct":
            direct = await a.wait("direct", DIRECT_BOUND + 5)
            row["direct"] = direct["t"] - start
            await b.wait("direct", 5)
        else:
            # The dialer reports when its direct attempt ended (see _webrtc_transport).
            ended = await a.wait_log("direct attempt to", linger_bound + 25)
            assert ended is not None, "the direct attempt never ended"
            row["linger"] = ended["t"] - start
            assert a.find("direct") is None
        await a.command("send", count=20, size=1000)
        sent = await a.wait("sent", 10, count=40)
        with trio.fail_after(10):
            while (stats := await b.stats())["count"] < 40:
                await trio.sleep(0.05)
        row["outcome"] = stats["type"]
        assert stats == {
            **stats,
            "count": 40,
            "in_order": True,
            "duplicates": 0,
            "sha": sent["sha"],
        }
        assert stats["type"] == expected
    RESULTS.append(row)
    return row


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "expected"), MATRIX, ids=[f"{a}--{b}" for a, b, _ in MATRIX]
)
async def test_nat_pair(internet, tmp_path, nat_a, nat_b, expected):
    with trio.fail_after(60):
        row = await run_cell(internet, tmp_path, nat_a, nat_b, expected)
    assert row["ttfb"] < FIRST_BYTE_BOUND
    if expected == "direct":
        assert row["direct"] < DIRECT_BOUND
    else:
        assert row["linger"] < LINGER_BOUND


async def test_lossy_port_restricted_pair_still_goes_direct(internet, tmp_path):
    """5% of UDP dropped at each router (nftables numgen; no netem here): ICE, DTLS
    and SCTP retransmit, and the stream still arrives intact, once and in order."""
    with trio.fail_after(60):
        row = await run_cell(
            internet, tmp_path, "port-restricted", "port-restricted", "direct", loss=5
        )
    assert row["ttfb"] < FIRST_BYTE_BOUND  # the relay path is TCP: no loss there
    assert row["direct"] < LOSSY_DIRECT_BOUND


async def test_unanswered_offer_lingers_direct_connect_timeout(internet, tmp_path):
    """B has direct disabled, so A's Offer is never answered: no remote candidates, so
    ICE has no checklist to fail and only ``direct_connect_timeout`` ends the attempt.
    The link works over the relay all along; the linger is that default."""
    timeout = P2PConfig().direct_connect_timeout
    with trio.fail_after(timeout + 40):
        row = await run_cell(
            internet,
            tmp_path,
            "full-cone",
            "full-cone",
            "relay",
            linger_bound=timeout,
            no_direct=True,
        )
    assert row["ttfb"] < FIRST_BYTE_BOUND
    assert timeout - 0.5 < row["linger"] < timeout + 2
