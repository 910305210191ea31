"""The local interface addresses a peer connection announces as host candidates."""

from __future__ import annotations

import ipaddress

__all__ = ["host_addresses"]


def host_addresses(include_loopback: bool = False, ipv6: bool = True) -> list[str]:
    """Addresses of the local interfaces, as host candidates (ifaddr, aioice's dependency).

    Link-local IPv6 is skipped (it needs a scope id peers cannot use); loopback only
    when asked, for tests on one machine.
    """
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(host)
            if address.version == 6 and (not ipv6 or address.is_link_local):
                continue
            if address.is_loopback and not include_loopback:
                continue
            if address.compressed not in found:
                found.append(address.compressed)
    return found
