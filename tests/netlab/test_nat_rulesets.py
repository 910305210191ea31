"""The lab's NATs behave as their names say (plain UDP probes, no SDK).

For each NAT type: the mapping towards two destinations (the same port unless the NAT
is symmetric), and which unsolicited datagrams get in after the host contacted one
address (full cone: any; address-restricted: from that address, any port;
port-restricted and symmetric: none). Then the conntrack race, explicitly: without
``ct state new drop``, a peer's packet that arrives before the host's own first packet
to that peer makes the router map that later packet to another port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from netlab_harness import read_line, subprocess_env
from netlab_topology import RELAY_IP, netns_argv

PROBE = str(Path(__file__).with_name("netlab_udp.py"))
HOST_PORT = 41000


def start(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        netns_argv(ns, sys.executable, PROBE, *args), stdout=subprocess.PIPE, env=subprocess_env()
    )


def lines_of(process: subprocess.Popen, timeout: float = 10) -> list[dict]:
    out, _ = process.communicate(timeout=timeout)
    return [json.loads(line) for line in out.decode().splitlines()]


def next_datagram(process: subprocess.Popen) -> dict:
    while "from" not in (line := json.loads(read_line(process.stdout, timeout=5))):
        pass
    return line


@pytest.fixture
def reflectors(internet):
    processes = [
        start(internet.lab.inet_ns, "--bind", str(port), "--listen", "20", "--reflect")
        for port in (7000, 7002)
    ]
    for process in processes:
        read_line(process.stdout, timeout=10)  # {"sent": true}: bound and listening
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


EXPECTED = {
    # nat type: (same mapping for both destinations, admits same-ip-other-port, other-ip)
    "full-cone": (True, True, True),
    "address-restricted": (True, True, False),
    "port-restricted": (True, False, False),
    "symmetric": (False, False, False),
}


@pytest.mark.parametrize("nat_type", list(EXPECTED))
def test_mapping_and_filtering(internet, reflectors, nat_type):
    site, other = internet.lab.add_site(nat_type), internet.lab.add_site("full-cone")
    host = start(
        site.host_ns,
        "--bind",
        str(HOST_PORT),
        "--listen",
        "2",
        "--send",
        f"{RELAY_IP}:7000:reflect",
        "--send",
        f"{RELAY_IP}:7002:reflect",
    )
    try:
        first, second = next_datagram(host), next_datagram(host)
        mappings = {tuple(json.loads(first["data"])), tuple(json.loads(second["data"]))}
        public = tuple(json.loads(first["data"]))
        assert all(ip == site.wan_ip for ip, _ in mappings)
        target = f"{public[0]}:{public[1]}"
        lines_of(start(internet.lab.inet_ns, "--bind", "7001", "--send", f"{target}:same-ip"))
        lines_of(start(other.host_ns, "--bind", str(HOST_PORT), "--send", f"{target}:other-ip"))
        received = {line["data"] for line in lines_of(host) if "from" in line}
    finally:
        host.kill()
        host.wait()
    same_mapping, same_ip, other_ip = EXPECTED[nat_type]
    assert (len(mappings) == 1) is same_mapping
    assert ("same-ip" in received) is same_ip
    assert ("other-ip" in received) is other_ip


@pytest.mark.parametrize(
    ("nat_type", "remapped"), [("port-restricted", False), ("port-restricted-racy", True)]
)
def test_conntrack_race(internet, reflectors, nat_type, remapped):
    """B's early packet to A's mapping; then A's first packet to B: which port does B see?"""
    site_a, site_b = internet.lab.add_site(nat_type), internet.lab.add_site("full-cone")
    learn = start(
        site_a.host_ns,
        "--bind",
        str(HOST_PORT),
        "--listen",
        "0.5",
        "--send",
        f"{RELAY_IP}:7000:reflect",
    )
    mapping = tuple(json.loads(next_datagram(learn)["data"]))
    lines_of(learn)
    # B (full cone, port kept) sends to A's mapping before A ever sent anything to B.
    b = start(
        site_b.host_ns,
        "--bind",
        str(HOST_PORT),
        "--listen",
        "2",
        "--send",
        f"{mapping[0]}:{mapping[1]}:early",
    )
    try:
        read_line(b.stdout, timeout=10)  # the early packet is out
        lines_of(
            start(
                site_a.host_ns,
                "--bind",
                str(HOST_PORT),
                "--send",
                f"{site_b.wan_ip}:{HOST_PORT}:hello",
            )
        )
        seen = [line["from"] for line in lines_of(b) if line.get("data") == "hello"]
    finally:
        b.kill()
        b.wait()
    assert len(seen) == 1 and seen[0][0] == site_a.wan_ip
    # The router had to pick another port: hole punching towards B fails.
    assert (seen[0][1] != mapping[1]) is remapped
