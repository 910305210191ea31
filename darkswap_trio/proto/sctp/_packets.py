"""SCTP packets (RFC 9260 3, 6.8): decoding network input into chunks, and sealing
encoded chunks into packets.

Decoding starts at :func:`parse_packet_untrusted`, which raises nothing but
:class:`SctpParseError`; :func:`parse_lone_data_untrusted` and
:func:`parse_plain_sack_untrusted` are the cheap decoders of a transfer's bulk (one DATA
chunk, one plain SACK) and raise nothing. :func:`seal_packet` prefixes encoded chunks
with the common header and the CRC32c.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from google_crc32c import extend as _crc32c_extend_untyped
from google_crc32c import value as _crc32c_untyped

from ..errors import SctpParseError
from ._chunks import (
    _CHUNK_HEADER,
    _INIT,
    _PAIR16,
    _RESET_REQ,
    _SACK,
    _TLV,
    _U32,
    _ZERO,
    AbortChunk,
    Chunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    OutgoingResetRequest,
    Params,
    ReconfigChunk,
    ReconfigParam,
    ReconfigResponse,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    UnknownReconfigParam,
)

# google_crc32c does not annotate these: the CRC32c of a bytes-like (extended by more), an int.
_crc32c: Callable[[bytes], int] = _crc32c_untyped
_crc32c_extend: Callable[[int, bytes], int] = _crc32c_extend_untyped

__all__ = [
    "CommonHeader",
    "encode_packet",
    "parse_lone_data_untrusted",
    "parse_packet_untrusted",
    "parse_plain_sack_untrusted",
    "parse_sack_data_untrusted",
    "seal_packet",
]

_HEADER = struct.Struct("!HHI")


@dataclass(slots=True)
class CommonHeader:
    source_port: int
    destination_port: int
    verification_tag: int


def _decode_tlvs(data: bytes, pos: int, end: int) -> Params:
    """TLV parameters / error causes, each padded to 4 bytes (the last one may be unpadded)."""
    params = []
    while pos < end:
        if end - pos < 4:
            raise SctpParseError("truncated parameter header")
        ptype, length = _TLV.unpack_from(data, pos)
        if length < 4 or pos + length > end:
            raise SctpParseError("bad parameter length")
        params.append((ptype, bytes(data[pos + 4 : pos + length])))
        pos += (length + 3) & ~3
    return params


# --- decoders: (flags, packet, value start, value end) -> chunk ---------------------------


def _dec_data(flags: int, data: bytes, pos: int, end: int) -> DataChunk:
    if end - pos < 13:
        raise SctpParseError("DATA chunk without user data")
    tsn, sid, ssn, ppid = struct.unpack_from("!IHHI", data, pos)
    return DataChunk(tsn, sid, ssn, ppid, data[pos + 12 : end], flags)


def _dec_init_common(cls: type[InitChunk], data: bytes, pos: int, end: int) -> InitChunk:
    if end - pos < 16:
        raise SctpParseError("truncated INIT")
    tag, a_rwnd, os_, mis, itsn = _INIT.unpack_from(data, pos)
    if tag == 0 or os_ == 0 or mis == 0:
        raise SctpParseError("INIT with zero tag or stream count")
    return cls(tag, a_rwnd, os_, mis, itsn, _decode_tlvs(data, pos + 16, end))


def _dec_sack(flags: int, data: bytes, pos: int, end: int) -> SackChunk:
    if end - pos < 12:
        raise SctpParseError("truncated SACK")
    cum, a_rwnd, ngaps, ndups = _SACK.unpack_from(data, pos)
    if end - pos != 12 + 4 * (ngaps + ndups):
        raise SctpParseError("SACK length does not match its counts")
    pos += 12
    gaps = [_PAIR16.unpack_from(data, pos + 4 * i) for i in range(ngaps)]
    for s, e in gaps:
        if s == 0 or e < s:
            raise SctpParseError("bad SACK gap block")
    pos += 4 * ngaps
    dups = [_U32.unpack_from(data, pos + 4 * i)[0] for i in range(ndups)]
    return SackChunk(cum, a_rwnd, gaps, dups)


def _dec_heartbeat(cls: type[HeartbeatChunk], data: bytes, pos: int, end: int) -> HeartbeatChunk:
    for ptype, value in _decode_tlvs(data, pos, end):
        if ptype == 1:
            return cls(value)
    raise SctpParseError("HEARTBEAT without Heartbeat Info")


def _dec_u32(data: bytes, pos: int, end: int) -> int:
    if end - pos != 4:
        raise SctpParseError("bad chunk length")
    value: int = _U32.unpack_from(data, pos)[0]
    return value


_EmptyChunk = TypeVar("_EmptyChunk")


def _dec_empty(chunk: _EmptyChunk, pos: int, end: int) -> _EmptyChunk:
    if end != pos:
        raise SctpParseError("unexpected chunk value")
    return chunk


def _dec_forward_tsn(flags: int, data: bytes, pos: int, end: int) -> ForwardTsnChunk:
    if end - pos < 4 or (end - pos) % 4:
        raise SctpParseError("bad FORWARD-TSN length")
    cum = _U32.unpack_from(data, pos)[0]
    streams = [_PAIR16.unpack_from(data, p) for p in range(pos + 4, end, 4)]
    return ForwardTsnChunk(cum, streams)


def _dec_reconfig_param(ptype: int, value: bytes) -> ReconfigParam:
    if ptype == 13:
        if len(value) < 12 or len(value) % 2:
            raise SctpParseError("bad outgoing SSN reset request")
        req, resp, last = _RESET_REQ.unpack_from(value, 0)
        streams = struct.unpack_from(f"!{(len(value) - 12) // 2}H", value, 12)
        return OutgoingResetRequest(req, resp, last, tuple(streams))
    if ptype == 16:
        if len(value) not in (8, 16):
            raise SctpParseError("bad re-configuration response")
        seq, result = struct.unpack_from("!II", value, 0)
        return ReconfigResponse(seq, result)
    return UnknownReconfigParam(ptype, value)


def _dec_reconfig(flags: int, data: bytes, pos: int, end: int) -> ReconfigChunk:
    params = [_dec_reconfig_param(t, v) for t, v in _decode_tlvs(data, pos, end)]
    if not 1 <= len(params) <= 2:
        raise SctpParseError("RE-CONFIG must carry one or two parameters")
    return ReconfigChunk(params)


_DECODERS: dict[int, Callable[[int, bytes, int, int], Chunk]] = {
    0: _dec_data,
    1: lambda f, d, p, e: _dec_init_common(InitChunk, d, p, e),
    2: lambda f, d, p, e: _dec_init_common(InitAckChunk, d, p, e),
    3: _dec_sack,
    4: lambda f, d, p, e: _dec_heartbeat(HeartbeatChunk, d, p, e),
    5: lambda f, d, p, e: _dec_heartbeat(HeartbeatAckChunk, d, p, e),
    6: lambda f, d, p, e: AbortChunk(_decode_tlvs(d, p, e), bool(f & 1)),
    7: lambda f, d, p, e: ShutdownChunk(_dec_u32(d, p, e)),
    8: lambda f, d, p, e: _dec_empty(ShutdownAckChunk(), p, e),
    9: lambda f, d, p, e: ErrorChunk(_decode_tlvs(d, p, e)),
    10: lambda f, d, p, e: CookieEchoChunk(bytes(d[p:e])),
    11: lambda f, d, p, e: _dec_empty(CookieAckChunk(), p, e),
    14: lambda f, d, p, e: _dec_empty(ShutdownCompleteChunk(bool(f & 1)), p, e),
    130: _dec_reconfig,
    192: _dec_forward_tsn,
}


def _checksum_ok(packet: bytes, accept_zero: bool) -> bool:
    stored = packet[8:12]
    if accept_zero and stored == _ZERO:
        return True  # RFC 9653, when we announced we accept it
    return _crc32c(packet[:8] + _ZERO + packet[12:]) == int.from_bytes(stored, "little")


def parse_packet_untrusted(
    data: bytes, *, accept_zero_checksum: bool = False
) -> tuple[CommonHeader, list[Chunk]]:
    """Decode one SCTP packet from the network; raises only :class:`SctpParseError`.

    Checks the CRC32c, every chunk and parameter length, and that a chunk's padding
    fits in the packet (only the last chunk may omit it). ``accept_zero_checksum``
    (RFC 9653) lets a zero checksum stand for a correct one, except on an INIT.
    """
    try:
        data = bytes(data)
        n = len(data)
        if n < 16:
            raise SctpParseError("packet too short")
        # RFC 9653: never for an INIT, sent before the peer knows what we accept.
        if not _checksum_ok(data, accept_zero_checksum and data[12] != 1):
            raise SctpParseError("bad CRC32c")
        header = CommonHeader(*_HEADER.unpack_from(data, 0))
        chunks: list[Chunk] = []
        pos = 12
        decoders = _DECODERS
        while pos < n:
            if n - pos < 4:
                raise SctpParseError("truncated chunk header")
            ctype, flags, length = _CHUNK_HEADER.unpack_from(data, pos)
            end = pos + length
            if length < 4 or end > n:
                raise SctpParseError("bad chunk length")
            decoder = decoders.get(ctype)
            if decoder is None:
                chunks.append(UnknownChunk(ctype, flags, data[pos + 4 : end]))
            else:
                chunks.append(decoder(flags, data, pos + 4, end))
            pos = (end + 3) & ~3
            if pos > n and end != n:
                raise SctpParseError("bad chunk padding")
        return header, chunks
    except SctpParseError:
        raise
    except (struct.error, ValueError, TypeError, IndexError) as exc:
        raise SctpParseError(f"malformed SCTP packet: {exc}") from exc


_DATA_FIELDS = struct.Struct("!IHHI")
_PAIR32 = struct.Struct("!II")


def parse_lone_data_untrusted(
    packet: bytes, header: bytes, accept_zero_checksum: bool = False
) -> DataChunk | None:
    """The bulk of a transfer, decoded cheaply: ``packet`` is exactly one DATA chunk
    behind the common header ``header`` (ports and verification tag, 8 bytes), and its
    CRC32c is correct (or zero, if accepted). Returns None for any other packet (decode
    it with :func:`parse_packet_untrusted`); raises nothing.
    """
    n = len(packet)
    if n < 29 or type(packet) is not bytes or packet[12] != 0 or not packet.startswith(header):
        return None
    end = 12 + ((packet[14] << 8) | packet[15])
    # One chunk: it ends the packet, padding included (or a last chunk's padding omitted).
    if end < 29 or (end != n and (end + 3) & ~3 != n):
        return None
    if not _checksum_ok(packet, accept_zero_checksum):
        return None
    tsn, sid, ssn, ppid = _DATA_FIELDS.unpack_from(packet, 16)
    return DataChunk(tsn, sid, ssn, ppid, packet[28:end], packet[13])


def parse_plain_sack_untrusted(
    packet: bytes, header: bytes, accept_zero_checksum: bool = False
) -> tuple[int, int] | None:
    """The sender's side of a transfer: ``packet`` is exactly one SACK with neither gap
    blocks nor duplicates behind ``header``, with a correct CRC32c. Returns its
    (cumulative TSN, a_rwnd), or None for any other packet; raises nothing.
    """
    if (
        len(packet) != 28
        or type(packet) is not bytes
        or packet[12] != 3
        or packet[14:16] != b"\x00\x10"
        or packet[24:28] != b"\x00\x00\x00\x00"
        or not packet.startswith(header)
        or not _checksum_ok(packet, accept_zero_checksum)
    ):
        return None
    return _PAIR32.unpack_from(packet, 16)


def parse_sack_data_untrusted(
    packet: bytes, header: bytes, accept_zero_checksum: bool = False
) -> tuple[int, int, DataChunk] | None:
    """A conversation's packet, decoded cheaply: exactly a SACK with neither gap blocks
    nor duplicates, then one DATA chunk, behind ``header``, with a correct CRC32c (or
    zero, if accepted). Returns (cumulative TSN, a_rwnd, the DATA chunk), or None for
    any other packet; raises nothing.
    """
    n = len(packet)
    if (
        n < 45
        or type(packet) is not bytes
        or packet[12] != 3
        or packet[28] != 0
        or packet[14:16] != b"\x00\x10"
        or packet[24:28] != b"\x00\x00\x00\x00"
        or not packet.startswith(header)
    ):
        return None
    end = 28 + ((packet[30] << 8) | packet[31])
    if end < 45 or (end != n and (end + 3) & ~3 != n):
        return None
    if not _checksum_ok(packet, accept_zero_checksum):
        return None
    cum_tsn, a_rwnd = _PAIR32.unpack_from(packet, 16)
    tsn, sid, ssn, ppid = _DATA_FIELDS.unpack_from(packet, 32)
    return cum_tsn, a_rwnd, DataChunk(tsn, sid, ssn, ppid, packet[44:end], packet[29])


def seal_packet(
    source_port: int,
    destination_port: int,
    verification_tag: int,
    body: bytes,
    zero_checksum: bool = False,
) -> bytes:
    """Prefix already encoded chunks with the common header and CRC32c (stored
    little-endian), or zero when the peer accepts that (RFC 9653)."""
    head = _HEADER.pack(source_port, destination_port, verification_tag)
    if zero_checksum:
        return head + _ZERO + body
    crc = _crc32c_extend(_crc32c(head + _ZERO), body)  # no copy of the body for the CRC
    return head + crc.to_bytes(4, "little") + body


def encode_packet(header: CommonHeader, chunks: Iterable[Chunk]) -> bytes:
    """Encode chunk objects into one packet (convenient; the association uses seal_packet)."""
    body = b"".join(c.encode() for c in chunks)
    return seal_packet(header.source_port, header.destination_port, header.verification_tag, body)
