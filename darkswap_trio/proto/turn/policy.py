"""Which peer addresses a TURN allocation may reach (lessons of coturn's CVEs).

CVE-2020-26262 (0.0.0.0 and [::] reaching the server's loopback services),
CVE-2018-4056 era reports and the "TURN as an SSRF proxy" class of bugs all come from
checking the address as written instead of the address the kernel will send to. So
the address is canonicalised first: IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible
(``::a.b.c.d``), NAT64 (``64:ff9b::/96``, RFC 6052), 6to4 (``2002::/16``) and
Teredo forms become the IPv4 address they reach, and then only globally routable
unicast addresses that are not the relay's own pass. ``allow_loopback`` (tests and
labs only) admits 127.0.0.0/8 and ::1, nothing else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["PeerPolicy", "canonical_peer_ip"]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use, never global
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical_peer_ip(text: str) -> IPAddress:
    """The address a peer string really reaches; raises ValueError if it is not an IP."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]  # the client's (obfuscation removed) address
    return address


class PeerPolicy:
    """Decides whether a peer IP may be permitted and sent to; results are cached."""

    def __init__(self, own_addresses: Iterable[str] = (), *, allow_loopback: bool = False) -> None:
        self._own = {canonical_peer_ip(a) for a in own_addresses}
        self.allow_loopback = allow_loopback
        self._cache: dict[str, str | None] = {}

    def check(self, text: str) -> str | None:
        """The canonical address (text) if ``text`` may be reached, else None.

        Cached (bounded): it runs on every relayed datagram.
        """
        try:
            return self._cache[text]
        except KeyError:
            pass
        address = self._decide(text)
        result = None if address is None else str(address)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[text] = result
        return result

    def _decide(self, text: str) -> IPAddress | None:
        try:
            address = canonical_peer_ip(text)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address in _NAT64_LOCAL:
            return None
        if address.is_loopback:
            return address if self.allow_loopback else None
        if (
            address in self._own
            or address.is_unspecified
            or address.is_multicast
            or address.is_link_local
            or address.is_private
            or address.is_reserved
            or not address.is_global
        ):
            return None
        return address
