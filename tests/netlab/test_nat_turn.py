"""TURN relay candidates behind real NATs: two SDK peers behind symmetric NATs, which
cannot reach each other directly (tests/netlab/test_nat_matrix.py: they stay on the
relay circuit), link directly through a TURN server on the lab's internet.

With coturn's ``turnserver`` both policies work. Our relay refuses peers outside
globally routable space, and the lab's internet is 203.0.113.0/24 (documentation
space): a relay candidate can only reach the other peer's relay candidate on the same
server, so with ours the peers run relay-only (``ice_transport_policy="relay"``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import asynccontextmanager

import pytest
import trio
from netlab_harness import RESULTS, lab_peers, read_line, subprocess_env
from netlab_topology import RELAY_IP, netns_argv

from darkswap_trio.proto.turn import rest_api_credentials

TURNSERVER = shutil.which("turnserver")
COTURN_PORT = 3479  # the relay's STUN service has 3478
SECRET = "netlab-turn-secret"
OUR_TURN_PORT = 3480
OUR_SIGNALING_PORT = 9004
needs_coturn = pytest.mark.skipif(TURNSERVER is None, reason="coturn's turnserver not installed")


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
        # default route to a gateway that does not exist does the same here (a static
        # neighbour entry: a failed ARP lookup would report EHOSTUNREACH again).
        lab._exec(
            lab.inet_ns, "ip", "neigh", "replace", "203.0.113.254",
            "lladdr", "02:00:00:00:00:fe", "dev", "br0", "nud", "permanent",
        )  # fmt: skip
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


@needs_coturn
@pytest.mark.parametrize(
    ("nat_a", "nat_b", "through_turn"),
    [("symmetric", "symmetric", True), ("full-cone", "full-cone", False)],
    ids=["symmetric--symmetric", "full-cone--full-cone"],
)
async def test_turn_relay_candidates_where_nats_need_them(
    internet, tmp_path, nat_a, nat_b, through_turn
):
    with trio.fail_after(60):
        async with coturn_on_the_internet(internet, tmp_path) as url:
            await run_pair(internet, tmp_path, url, nat_a, nat_b, through_turn, "coturn")


@asynccontextmanager
async def our_turn_on_the_internet(internet, tmp_path):
    """Our relay (python -m relay --turn) in the internet namespace, next to the lab's."""
    secret_file = tmp_path / "turn_secret"
    secret_file.write_text(SECRET)
    argv = netns_argv(
        internet.lab.inet_ns, sys.executable, "-m", "relay", "--host", RELAY_IP,
        "--port", str(OUR_SIGNALING_PORT), "--stun-port", str(OUR_TURN_PORT),
        "--metrics-port", "none", "--log-level", "WARNING", "--turn",
        "--turn-secret-file", str(secret_file), "--turn-realm", "netlab",
    )  # fmt: skip
    with open(tmp_path / "our-turn.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=subprocess_env())
    try:
        ready = await trio.to_thread.run_sync(read_line, process.stdout, 30)
        assert ready.startswith("READY"), (tmp_path / "our-turn.log").read_text()[-2000:]
        yield f"turn:{RELAY_IP}:{OUR_TURN_PORT}?transport=udp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


async def test_symmetric_pair_relay_only_through_our_turn_server(internet, tmp_path):
    with trio.fail_after(60):
        async with our_turn_on_the_internet(internet, tmp_path) as url:
            await run_pair(
                internet, tmp_path, url, "symmetric", "symmetric", True, "ours", relay_only=True
            )


async def run_pair(internet, tmp_path, url, nat_a, nat_b, through_turn, server, **extra):
    username, password = rest_api_credentials(SECRET.encode(), "lab", 3600, time.time())
    sites = [internet.lab.add_site(nat_a), internet.lab.add_site(nat_b)]
    options = {"turn": url, "turn_username": username, "turn_credential": password}
    async with lab_peers(internet, sites, tmp_path, **options, **extra) as (a, b):
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
        # Through TURN one end's selected local candidate is a relay one. The other end
        # may see it as peer-reflexive (its check came before the candidate), so both
        # ends' views are taken together.
        stats_a = await a.stats()
        types = {stats["local_type"], stats["remote_type"]}
        types |= {stats_a["local_type"], stats_a["remote_type"]}
        assert ("relay" in types) is through_turn, (types, stats, stats_a)
        RESULTS.append(
            {
                "a": nat_a,
                "b": f"{nat_b} ({server} TURN)",
                "outcome": "direct",
                "candidates": f"{stats_a['local_type']}/{stats_a['remote_type']} at A",
                "direct": direct["t"] - link["start"],
            }
        )
