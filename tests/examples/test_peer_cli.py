"""darkswap-peer as a subprocess against a relay process (127.0.0.1, STUN on)."""

from __future__ import annotations

import re
import subprocess
import sys

from example_processes import child_env, read_until, run, start, stop

from darkswap_trio import Keypair
from darkswap_trio._peer_cli import mapping_verdict

CLI = ["-m", "darkswap_trio._peer_cli"]


def test_probe_proves_the_relay_and_reports_stun(relay_process):
    out = run(
        [*CLI, "probe", relay_process.multiaddr, "--stun-port", str(relay_process.stun_port)],
        timeout=30,
    )
    relay_id = relay_process.multiaddr.rsplit("/", 1)[1]
    assert f"identity   proven: relay is {relay_id}" in out
    assert re.search(r"rtt        3 pings: min [\d.]+ ms", out)
    assert re.search(
        rf"stun       127\.0\.0\.1:{relay_process.stun_port} mapped us to 127\.0\.0\.1:\d+", out
    )
    assert "nat        none: the mapped address is our own" in out
    assert "mapping behaviour: unknown (relay offers one address)" in out


def test_probe_refuses_a_relay_with_another_peer_id(relay_process):
    impostor = relay_process.multiaddr.rsplit("/", 1)[0] + "/" + str(Keypair.generate().peer_id)
    done = subprocess.run(
        [sys.executable, *CLI, "probe", impostor, "--stun-port", "none"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    assert done.returncode == 1
    assert "darkswap-peer probe: failed: RelayAuthenticationError" in done.stderr


def test_listen_ping_and_connect(relay_process):
    listener = start([*CLI, "listen", "--relay", relay_process.multiaddr, "--duration", "60"])
    try:
        peer_id = read_until(listener, "listening", 30).split()[-1]
        out = run(
            [
                *CLI,
                "ping",
                peer_id,
                "--relay",
                relay_process.multiaddr,
                "--count",
                "3",
                "--interval",
                "0.05",
            ],
            timeout=30,
        )
        assert re.search(rf"link       to {peer_id} via (relay|direct) in [\d.]+ ms", out)
        assert len(re.findall(r"seq=\d path=(relay|direct) rtt=[\d.]+ ms", out)) == 3
        out = run([*CLI, "connect", peer_id, "--relay", relay_process.multiaddr], timeout=30)
        assert (
            re.search(r"upgrade    to direct [\d.]+ ms after the dial", out)
            or "via direct" in out.splitlines()[0]
        )
        assert re.search(r"path       direct: rtt median [\d.]+ ms over 5 echoes", out)
    finally:
        listened = stop(listener)
    # Each link reached the listener, and went direct (upgraded, or direct from the start).
    assert listened.count("link       from") == 2
    assert "upgraded" in listened or "via direct" in listened


def test_connect_relay_only_reports_the_relay_path(relay_process):
    listener = start(
        [*CLI, "listen", "--relay", relay_process.multiaddr, "--duration", "60", "--relay-only"]
    )
    try:
        peer_id = read_until(listener, "listening", 30).split()[-1]
        out = run(
            [
                *CLI,
                "connect",
                peer_id,
                "--relay",
                relay_process.multiaddr,
                "--relay-only",
                "--count",
                "2",
            ],
            timeout=30,
        )
        assert "via relay" in out and "path       relay: rtt median" in out
        assert re.search(r"bytes      sent \d+ \(relay \d+, direct 0\)", out)
    finally:
        stop(listener)


def test_mapping_verdicts_rfc5780():
    a, b, c = ("198.51.100.1", 40000), ("198.51.100.1", 40001), ("198.51.100.1", 40002)
    assert mapping_verdict(a, None, None) == "mapping behaviour: unknown (relay offers one address)"
    assert mapping_verdict(a, a, a) == "mapping behaviour: endpoint-independent"
    assert mapping_verdict(a, b, b) == "mapping behaviour: address-dependent"
    assert mapping_verdict(a, b, c) == "mapping behaviour: address and port-dependent"
