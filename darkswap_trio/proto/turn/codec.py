"""TURN wire format (RFC 8656) over STUN (RFC 8489): strict parsing and encoding.

aioice's dict-based :class:`~aioice.stun.Message` keeps one value per attribute name,
but a CreatePermission request may carry several XOR-PEER-ADDRESS attributes, and
MESSAGE-INTEGRITY must be checked over the exact bytes received. So requests are
framed by :func:`~darkswap_trio.proto.stun.parse_stun_untrusted` (header, bounds,
FINGERPRINT) and then walked attribute by attribute here; responses are encoded by
hand from ``(type, value)`` pairs so any attribute (UNKNOWN-ATTRIBUTES included) can
be sent.

Everything reading network bytes raises only :class:`TurnParseError`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from aioice import stun as _aioice_stun

from ..errors import StunParseError, TurnParseError
from ..stun import MAGIC_COOKIE, parse_stun_untrusted

__all__ = [
    "Attr",
    "TurnMessage",
    "StreamDeframer",
    "encode_channel_data",
    "encode_message",
    "error_attrs",
    "parse_channel_data_untrusted",
    "parse_turn_untrusted",
    "xor_address",
]

HEADER_LENGTH = 20
# Channel numbers (RFC 8656 section 12); RFC 5766 allowed up to 0x7FFF, and some
# clients (coturn's turnutils_uclient) still pick from that range.
MIN_CHANNEL = 0x4000
MAX_CHANNEL = 0x4FFF
MAX_CHANNEL_RFC5766 = 0x7FFF

# Methods (RFC 8656 section 17) and classes.
BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004
SEND = 0x006
DATA = 0x007
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009
REQUEST = 0x000
INDICATION = 0x010
SUCCESS = 0x100
ERROR = 0x110


class Attr:
    """Attribute types used by the server (RFC 8489 section 18.3, RFC 8656 section 18)."""

    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    XOR_MAPPED_ADDRESS = 0x0020
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028


REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    508: "Insufficient Capacity",
}

# Comprehension-required attributes this server understands; any other type below
# 0x8000 in a request is refused with 420 (RFC 8489 section 7.3.1). EVEN-PORT is
# understood (an even port is bound; a reservation, R bit set, is refused with 508).
# RESERVATION-TOKEN, DONT-FRAGMENT, MESSAGE-INTEGRITY-SHA256, PASSWORD-ALGORITHM and
# USERHASH are deliberately absent: we do not implement them, and the RFCs say to
# answer 420 rather than ignore them.
KNOWN_REQUIRED = frozenset(
    {
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.ERROR_CODE,
        Attr.UNKNOWN_ATTRIBUTES,
        Attr.CHANNEL_NUMBER,
        Attr.LIFETIME,
        Attr.XOR_PEER_ADDRESS,
        Attr.DATA,
        Attr.REALM,
        Attr.NONCE,
        Attr.XOR_RELAYED_ADDRESS,
        Attr.REQUESTED_ADDRESS_FAMILY,
        Attr.EVEN_PORT,
        Attr.REQUESTED_TRANSPORT,
        Attr.XOR_MAPPED_ADDRESS,
        0x0024,  # PRIORITY (ICE), harmless
        0x0025,  # USE-CANDIDATE (ICE), harmless
    }
)
# Indications get no 420 (there is no response); their unknown attributes are ignored.
_MAX_UNKNOWN_REPORTED = 16
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


@dataclass(frozen=True)
class TurnMessage:
    """A parsed STUN-framed TURN request or indication.

    ``attributes`` keeps every attribute before MESSAGE-INTEGRITY in wire order (the
    ones after it, but FINGERPRINT, are unauthenticated and dropped, RFC 8489
    section 14.5); ``integrity_offset`` is where MESSAGE-INTEGRITY starts, or None.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]
    raw: bytes
    integrity_offset: int | None

    def first(self, attr_type: int) -> bytes | None:
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def all(self, attr_type: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr_type]

    def unknown_required(self) -> list[int]:
        unknown = sorted({t for t, _ in self.attributes if t < 0x8000 and t not in KNOWN_REQUIRED})
        return unknown[:_MAX_UNKNOWN_REPORTED]

    def check_integrity(self, key: bytes) -> bool:
        """MESSAGE-INTEGRITY (HMAC-SHA1) over the bytes before it, length adjusted."""
        if self.integrity_offset is None:
            return False
        value = self.raw[self.integrity_offset + 4 : self.integrity_offset + 24]
        expected = _aioice_stun.message_integrity(self.raw[: self.integrity_offset], key)
        return hmac.compare_digest(value, expected)

    def text(self, attr_type: int, limit: int = 763) -> str | None:
        """A UTF-8 attribute (USERNAME, REALM, NONCE) or None; raises TurnParseError."""
        value = self.first(attr_type)
        if value is None:
            return None
        if len(value) > limit:
            raise TurnParseError(f"attribute 0x{attr_type:04x} too long")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TurnParseError(f"attribute 0x{attr_type:04x} is not UTF-8") from exc

    def uint32(self, attr_type: int) -> int | None:
        value = self.first(attr_type)
        if value is None:
            return None
        if len(value) != 4:
            raise TurnParseError(f"attribute 0x{attr_type:04x} must be 4 bytes")
        return int(struct.unpack("!I", value)[0])

    def peer_addresses(self) -> list[tuple[str, int]]:
        """Every XOR-PEER-ADDRESS, in order; raises TurnParseError on a bad one."""
        return [xor_address(v, self.transaction_id) for v in self.all(Attr.XOR_PEER_ADDRESS)]


def xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """Decode an XOR-*-ADDRESS attribute value (RFC 8489 section 14.2)."""
    if len(value) < 4:
        raise TurnParseError("XOR address too short")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    pad = _COOKIE_BYTES + transaction_id
    if family == _FAMILY_IPV4 and len(value) == 8:
        raw = bytes(a ^ b for a, b in zip(value[4:8], pad[:4], strict=True))
        return str(ipaddress.IPv4Address(raw)), port
    if family == _FAMILY_IPV6 and len(value) == 20:
        raw = bytes(a ^ b for a, b in zip(value[4:20], pad, strict=True))
        return str(ipaddress.IPv6Address(raw)), port
    raise TurnParseError("XOR address has a bad family or length")


def pack_xor_address(addr: tuple[str, int], transaction_id: bytes) -> bytes:
    try:
        return _aioice_stun.pack_xor_address((str(addr[0]), int(addr[1])), transaction_id)
    except ValueError as exc:  # our own addresses only: a bug, not input
        raise ValueError(f"cannot encode address {addr!r}") from exc


def parse_turn_untrusted(data: bytes) -> TurnMessage:
    """Parse a STUN-framed TURN request or indication from a client.

    Framing, bounds and FINGERPRINT are checked by ``parse_stun_untrusted``; the
    attributes are then walked on the raw bytes (repeated ones kept).

    Raises:
        TurnParseError: the only exception raised, whatever the input.
    """
    data = bytes(data)
    try:
        parse_stun_untrusted(data)  # header, cookie, lengths, attribute bounds, FINGERPRINT
    except StunParseError as exc:
        raise TurnParseError(str(exc)) from exc
    message_type = struct.unpack_from("!H", data)[0]
    cls = message_type & 0x0110
    method = message_type & 0x3EEF
    attributes: list[tuple[int, bytes]] = []
    integrity_offset: int | None = None
    pos = HEADER_LENGTH
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4 : pos + 4 + attr_len]
        if integrity_offset is None:
            if attr_type == Attr.MESSAGE_INTEGRITY:
                if attr_len != 20:
                    raise TurnParseError("MESSAGE-INTEGRITY must be 20 bytes")
                integrity_offset = pos
            elif attr_type != Attr.FINGERPRINT:
                attributes.append((attr_type, value))
        pos += 4 + attr_len + (-attr_len % 4)
    return TurnMessage(method, cls, data[8:20], tuple(attributes), data, integrity_offset)


def encode_message(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]],
    *,
    integrity_key: bytes | None = None,
    fingerprint: bool = True,
) -> bytes:
    """Encode a STUN message from ``(type, value)`` pairs, then MESSAGE-INTEGRITY
    (when a key is given) and FINGERPRINT."""
    body = bytearray()
    for attr_type, value in attributes:
        body += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    data = struct.pack("!HHI12s", method | cls, len(body), MAGIC_COOKIE, transaction_id) + body
    if integrity_key is not None:
        mac = _aioice_stun.message_integrity(data, integrity_key)
        data += struct.pack("!HH", Attr.MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        crc = _aioice_stun.message_fingerprint(data)
        data += struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)
    return data[:2] + struct.pack("!H", len(data) - HEADER_LENGTH) + data[4:]


def encode_data_indication(transaction_id: bytes, peer: tuple[str, int], data: bytes) -> bytes:
    """A Data indication (RFC 8656 section 11.4); no FINGERPRINT (clients do not need it)."""
    attrs = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, transaction_id)), (Attr.DATA, data)]
    return encode_message(DATA, INDICATION, transaction_id, attrs, fingerprint=False)


def error_attrs(code: int, reason: str) -> list[tuple[int, bytes]]:
    """An ERROR-CODE attribute (RFC 8489 section 14.8)."""
    return [(Attr.ERROR_CODE, struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode())]


def unknown_attributes_attr(types: list[int]) -> tuple[int, bytes]:
    return Attr.UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", t) for t in types)


def uint32_attr(attr_type: int, value: int) -> tuple[int, bytes]:
    return attr_type, struct.pack("!I", value)


def is_channel_data(data: bytes) -> bool:
    """First two bits 01 (RFC 7983): ChannelData rather than STUN."""
    return len(data) >= 1 and 0x40 <= data[0] <= 0x7F


def parse_channel_data_untrusted(
    data: bytes, *, stream: bool = False, max_channel: int = MAX_CHANNEL
) -> tuple[int, bytes]:
    """``(channel_number, payload)`` of a ChannelData message (RFC 8656 section 12.4).

    Over UDP the datagram may carry padding after the payload; over TCP
    (``stream=True``) the message is exactly header + payload + padding to 4 bytes.

    Raises:
        TurnParseError: the only exception raised, whatever the input.
    """
    data = bytes(data)
    if len(data) < 4:
        raise TurnParseError("ChannelData too short")
    channel, length = struct.unpack_from("!HH", data)
    if not MIN_CHANNEL <= channel <= max_channel:
        raise TurnParseError(f"ChannelData channel number 0x{channel:04x} out of range")
    if len(data) < 4 + length or (stream and len(data) != 4 + length + (-length % 4)):
        raise TurnParseError("ChannelData length mismatch")
    return channel, data[4 : 4 + length]


def encode_channel_data(channel: int, payload: bytes, *, stream: bool = False) -> bytes:
    """A ChannelData message; padded to 4 bytes over a stream (RFC 8656 section 12.5)."""
    header = struct.pack("!HH", channel, len(payload))
    return header + payload + (bytes(-len(payload) % 4) if stream else b"")


class StreamDeframer:
    """Splits a TCP byte stream into STUN messages and ChannelData (RFC 8656 section 12.5).

    STUN messages are delimited by their header's length (always a multiple of 4);
    ChannelData by its length field plus padding to 4 bytes. At most one message
    (<= 65,559 bytes) is ever buffered beyond what the caller fed.
    """

    def __init__(self, max_channel: int = MAX_CHANNEL) -> None:
        self._buffer = bytearray()
        self._max_first = max_channel >> 8

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the complete messages now available.

        Raises:
            TurnParseError: the stream is not TURN framing (the connection must close).
        """
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= 4:
            first = self._buffer[0]
            (length,) = struct.unpack_from("!H", self._buffer, 2)
            if first <= 0x03:
                if length % 4:
                    raise TurnParseError("STUN length over TCP is not a multiple of 4")
                total = HEADER_LENGTH + length
            elif 0x40 <= first <= self._max_first:
                total = 4 + length + (-length % 4)
            else:
                raise TurnParseError(f"byte 0x{first:02x} starts neither STUN nor ChannelData")
            if len(self._buffer) < total:
                break
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]
        return out


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), the long-term credential key (RFC 8489 section 9.2.2)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()
