"""Network namespaces with nftables NATs for the NAT lab (tests/netlab).

One *internet* namespace holds a bridge on 203.0.113.0/24 and the relay host
(203.0.113.1). Each :class:`Site` is a NAT router namespace (``wan`` veth into the
internet bridge, ``lan`` veth to its host) and one host namespace behind it; LANs are
/30s carved out of 198.51.100.0/24 so every host has its own address. Nothing is
created in, moved into or routed to the root namespace: both ends of every veth are
created inside the lab's namespaces, and default routes point at lab routers only.

Everything is torn down by :meth:`Lab.close` (namespaces deleted; processes inside
them are killed first), which the fixtures call in ``finally``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

INTERNET_PREFIX = "203.0.113."
RELAY_IP = "203.0.113.1"
LAN_PREFIX = "198.51.100."
NAT_TYPES = (
    "full-cone",
    "address-restricted",
    "port-restricted",
    "symmetric",
    "port-restricted-racy",
)


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs `{tool}` (scripts/install-netlab.sh installs it)"
    probe = f"dsl-probe-{secrets.token_hex(3)}"
    try:
        run("ip", "netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot create network namespaces: {exc.stderr.strip()}"
    try:
        run("ip", "netns", "exec", probe, "nft", "list", "ruleset")
    except subprocess.CalledProcessError as exc:
        return f"nftables does not work in a namespace: {exc.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def run(*argv: str, input: str | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=20)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
    return result.stdout


def nat_ruleset(nat_type: str, host_ip: str) -> str:
    """The nftables ruleset of a router for ``nat_type`` (its host is ``host_ip``).

    Mapping is endpoint-independent (masquerade keeps the host's port when it can)
    except for ``symmetric`` (``fully-random``: a new port per destination). Filtering:
    full cone lets any inbound UDP in (DNAT to the host); address-restricted only from
    addresses the host contacted (a dynamic set); port-restricted only replies
    (conntrack). ``ct state new drop`` in *prerouting* drops an unsolicited packet
    before conntrack confirms an entry for it: without it (``port-restricted-racy``)
    an early inbound packet from the peer claims the tuple, and the router maps the
    host's own later packet to that peer to another port, defeating hole punching.
    """
    if nat_type not in NAT_TYPES:
        raise ValueError(f"unknown NAT type {nat_type!r}")
    masquerade = "masquerade fully-random" if nat_type == "symmetric" else "masquerade"
    pre_nat = ""
    pre_filter = 'iifname "wan" ct state new drop'
    forward = ""
    if nat_type == "full-cone":
        pre_nat = f'iifname "wan" meta l4proto udp dnat to {host_ip}'
        pre_filter = ""
    elif nat_type == "address-restricted":
        pre_nat = f'iifname "wan" meta l4proto udp ip saddr @contacted dnat to {host_ip}'
        forward = 'iifname "lan" oifname "wan" update @contacted { ip daddr }'
        pre_filter = 'iifname "wan" ct state new ip saddr != @contacted drop'
    elif nat_type == "port-restricted-racy":
        pre_filter = ""
    return f"""
table ip lab {{
    set contacted {{ type ipv4_addr; flags dynamic,timeout; timeout 10m; }}
    set blocked {{ type inet_proto; }}
    chain pre_filter {{
        type filter hook prerouting priority -150; policy accept;
        meta l4proto @blocked drop
        {pre_filter}
    }}
    chain pre_nat {{
        type nat hook prerouting priority dstnat; policy accept;
        {pre_nat}
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        meta l4proto @blocked drop
        {forward}
    }}
    chain post_nat {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
}}
"""


@dataclass
class Site:
    """A NAT router and the one host behind it."""

    name: str
    nat_type: str
    router_ns: str
    host_ns: str
    wan_ip: str
    router_lan_ip: str
    host_ip: str

    def block_udp(self) -> None:
        """Drop all UDP through the router and forget its NAT state (TCP keeps working)."""
        run(
            "ip",
            "netns",
            "exec",
            self.router_ns,
            "nft",
            "add",
            "element",
            "ip",
            "lab",
            "blocked",
            "{ udp }",
        )
        subprocess.run(
            ["ip", "netns", "exec", self.router_ns, "conntrack", "-F"],
            capture_output=True,
            check=False,
            timeout=20,
        )

    def unblock_udp(self) -> None:
        run(
            "ip",
            "netns",
            "exec",
            self.router_ns,
            "nft",
            "delete",
            "element",
            "ip",
            "lab",
            "blocked",
            "{ udp }",
        )

    def set_loss(self, percent: int) -> None:
        """Drop ``percent``% of forwarded UDP at random (nftables numgen; no netem here)."""
        rule = f"meta l4proto udp numgen random mod 100 < {int(percent)} drop"
        run(
            "ip",
            "netns",
            "exec",
            self.router_ns,
            "nft",
            "insert",
            "rule",
            "ip",
            "lab",
            "forward",
            rule,
        )


@dataclass
class Lab:
    """The internet namespace plus any number of sites; :meth:`close` removes all."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    _next_lan: int = 0
    _next_wan: int = 10

    @property
    def inet_ns(self) -> str:
        return f"dsl-{self.suffix}-inet"

    def _add_ns(self, name: str) -> str:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self._exec(name, "ip", "link", "set", "lo", "up")
        return name

    def _exec(self, ns: str, *argv: str) -> str:
        return run("ip", "netns", "exec", ns, *argv)

    def build_internet(self) -> None:
        ns = self._add_ns(self.inet_ns)
        self._exec(ns, "ip", "link", "add", "br0", "type", "bridge")
        self._exec(ns, "ip", "addr", "add", f"{RELAY_IP}/24", "dev", "br0")
        self._exec(ns, "ip", "link", "set", "br0", "up")

    def add_site(self, nat_type: str) -> Site:
        index = len(self.sites)
        router = self._add_ns(f"dsl-{self.suffix}-r{index}")
        host = self._add_ns(f"dsl-{self.suffix}-h{index}")
        wan_ip = f"{INTERNET_PREFIX}{self._next_wan}"
        self._next_wan += 1
        base = 4 * self._next_lan
        self._next_lan += 1
        router_lan, host_ip = f"{LAN_PREFIX}{base + 1}", f"{LAN_PREFIX}{base + 2}"
        # Both veth ends are created inside lab namespaces (never in the root one).
        port = f"p{index}"
        self._exec(
            router,
            "ip",
            "link",
            "add",
            "wan",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.inet_ns,
        )
        self._exec(self.inet_ns, "ip", "link", "set", port, "master", "br0")
        self._exec(self.inet_ns, "ip", "link", "set", port, "up")
        self._exec(
            router,
            "ip",
            "link",
            "add",
            "lan",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host,
        )
        self._exec(router, "ip", "addr", "add", f"{wan_ip}/24", "dev", "wan")
        self._exec(router, "ip", "addr", "add", f"{router_lan}/30", "dev", "lan")
        self._exec(router, "ip", "link", "set", "wan", "up")
        self._exec(router, "ip", "link", "set", "lan", "up")
        self._exec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._exec(host, "ip", "addr", "add", f"{host_ip}/30", "dev", "eth0")
        self._exec(host, "ip", "link", "set", "eth0", "up")
        self._exec(host, "ip", "route", "add", "default", "via", router_lan)
        run("ip", "netns", "exec", router, "nft", "-f", "-", input=nat_ruleset(nat_type, host_ip))
        site = Site(f"{nat_type}#{index}", nat_type, router, host, wan_ip, router_lan, host_ip)
        self.sites.append(site)
        return site

    def close(self) -> None:
        """Kill whatever still runs in the lab's namespaces, then delete them."""
        for ns in reversed(self.namespaces):
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False, timeout=20
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=20)
        self.namespaces.clear()


def netns_argv(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]
