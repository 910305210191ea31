"""The interface addresses a PeerConnection gathers host candidates from (its
server-reflexive ones: test_srflx_relay_stun.py)."""

from __future__ import annotations

from darkswap_trio.webrtc._interfaces import host_addresses


def test_host_address_enumeration_skips_loopback_unless_asked():
    assert "127.0.0.1" in host_addresses(include_loopback=True)
    found = host_addresses()
    assert "127.0.0.1" not in found and "::1" not in found
    assert not any(a.startswith("fe80:") for a in found)
