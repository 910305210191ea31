"""RFC 7983 demultiplexing of the datagrams arriving on one UDP socket.

The first byte tells the protocol apart: 0-3 STUN, 20-63 DTLS. Everything else
(ZRTP, TURN channels, RTP/RTCP, garbage) is not ours to handle on a data-channel-only
socket: callers drop it and count it.
"""

from __future__ import annotations

import enum

__all__ = ["DatagramKind", "classify"]


class DatagramKind(enum.Enum):
    """What a datagram is, by RFC 7983 section 7."""

    STUN = "stun"
    DTLS = "dtls"
    OTHER = "other"


def classify(datagram: bytes) -> DatagramKind:
    """Classify a datagram by its first byte (RFC 7983); an empty one is OTHER."""
    if not datagram:
        return DatagramKind.OTHER
    first = datagram[0]
    if first <= 3:
        return DatagramKind.STUN
    if 20 <= first <= 63:
        return DatagramKind.DTLS
    return DatagramKind.OTHER
