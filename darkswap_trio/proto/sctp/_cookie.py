"""The SCTP state cookie (RFC 9260 5.1.3): what an INIT told us, signed with our secret.

An association that answers INIT keeps no state; the peer echoes this cookie back and
the HMAC proves we issued it. The creation time (the ``now`` of the issuer) limits its
lifetime. Nothing secret is inside, only integrity matters.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from ._chunks import InitChunk

_BODY = struct.Struct("!dIIIIHB")  # created, tags, peer TSN, rwnd, inbound streams, flags
_MAC_SIZE = 32


@dataclass(frozen=True, slots=True)
class StateCookie:
    created: float
    local_tag: int
    peer_tag: int
    peer_initial_tsn: int
    peer_a_rwnd: int
    peer_inbound_streams: int
    forward_tsn_supported: bool
    zero_checksum_dtls: bool = False


def make_cookie(secret: bytes, now: float, local_tag: int, init: InitChunk) -> bytes:
    body = _BODY.pack(
        now,
        local_tag,
        init.initiate_tag,
        init.initial_tsn,
        init.a_rwnd,
        init.inbound_streams,
        int(init.forward_tsn_supported) | int(init.zero_checksum_dtls) << 1,
    )
    return body + hmac.new(secret, body, hashlib.sha256).digest()


def open_cookie_untrusted(secret: bytes, cookie: bytes) -> StateCookie | None:
    """The cookie's contents if we issued it (valid HMAC), else None."""
    if len(cookie) != _BODY.size + _MAC_SIZE:
        return None
    body, mac = cookie[: _BODY.size], cookie[_BODY.size :]
    if not hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest(), mac):
        return None
    created, local_tag, peer_tag, tsn, rwnd, streams, flags = _BODY.unpack(body)
    return StateCookie(
        created, local_tag, peer_tag, tsn, rwnd, streams, bool(flags & 1), bool(flags & 2)
    )
