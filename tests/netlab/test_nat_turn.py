"""TURN relay candidates behind real NATs: two SDK peers behind symmetric NATs, which
cannot reach each other directly (tests/netlab/test_nat_matrix.py: they stay on the
relay circuit), link directly through a TURN server on the lab's internet.

The TURN server is coturn's ``turnserver`` in the internet namespace: ours refuses
peers outside globally routable space, and the lab's internet is 203.0.113.0/24
(documentation space), so it would deny every lab peer (see the report of #14).
"""

from __future__ import annotations

import shutil
import time
from contextlib import asynccontextmanager

import pytest
import trio
from netlab_harness import RESULTS, lab_peers
from netlab_topology import RELAY_IP, netns_argv

from darkswap_trio.proto.turn import rest_api_credentials

TURNSERVER = shutil.which("turnserver")
COTURN_PORT = 3479  # the relay's STUN service has 3478
SECRET = "netlab-turn-secret"
pytestmark = pytest.mark.skipif(TURNSERVER is None, reason="coturn's turnserver not installed")


@asynccontextmanager
async def coturn_on_the_internet(internet, tmp_path):
    assert TURNSERVER is not None
    log = tmp_path / "coturn.log"
    argv = netns_argv(
        internet.lab.inet_ns,
        TURNSERVER, "-n", "-v", "--listening-ip", RELAY_IP, "-p", str(COTURN_PORT),
        "--relay-ip", RELAY_IP, "--use-auth-secret", "--static-auth-secret", SECRET,
        "--realm", "netlab", "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log", "--simple-log",
        "--log-file", str(log), "--pidfile", str(tmp_path / "coturn.pid"),
        "--min-port", "50000", "--max-port", "50999",
    )  # fmt: skip
    lab = internet.lab
    if "default" not in lab._exec(lab.inet_ns, "ip", "route", "show"):
        # The internet namespace has no default route, so coturn's relayed socket gets
        # ENETUNREACH for a peer's private host candidate, and coturn then ends the
        # whole allocation. On the real internet such a datagram is silently lost: a
        # default route to a gateway nobody answers ARP for does the same here.
        lab._exec(lab.inet_ns, "ip", "route", "add", "default", "via", "203.0.113.254")
    process = await trio.lowlevel.open_process(argv)
    try:
        with trio.fail_after(10):
            while not (log.exists() and "Total General servers" in log.read_text()):
                await trio.sleep(0.05)
        yield f"turn:{RELAY_IP}:{COTURN_PORT}?transport=udp"
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "through_turn"),
    [("symmetric", "symmetric", True), ("full-cone", "full-cone", False)],
    ids=["symmetric--symmetric", "full-cone--full-cone"],
)
async def test_turn_relay_candidates_where_nats_need_them(
    internet, tmp_path, nat_a, nat_b, through_turn
):
    username, password = rest_api_credentials(SECRET.encode(), "lab", 3600, time.time())
    with trio.fail_after(60):
        async with coturn_on_the_internet(internet, tmp_path) as url:
            sites = [internet.lab.add_site(nat_a), internet.lab.add_site(nat_b)]
            options = {"turn": url, "turn_username": username, "turn_credential": password}
            async with lab_peers(internet, sites, tmp_path, **options) as (a, b):
                await a.command("connect", peer=b.peer_id)
                link = await a.wait("link", 15)
                direct = await a.wait("direct", 15)
                await b.wait("direct", 10)
                await a.command("send", count=40, size=1000)
                sent = await a.wait("sent", 10, count=40)
                with trio.fail_after(10):
                    while (stats := await b.stats())["count"] < 40:
                        await trio.sleep(0.05)
                assert stats == {**stats, "in_order": True, "duplicates": 0, "sha": sent["sha"]}
                assert stats["type"] == "direct"
                types = {stats["local_type"], stats["remote_type"]}
                assert ("relay" in types) is through_turn, stats
                RESULTS.append(
                    {
                        "a": nat_a,
                        "b": nat_b + " (TURN)",
                        "outcome": "direct",
                        "candidates": f"{stats['local_type']}/{stats['remote_type']}",
                        "direct": direct["t"] - link["start"],
                    }
                )
