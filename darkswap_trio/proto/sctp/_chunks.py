"""SCTP chunks (RFC 9260, RFC 3758 FORWARD-TSN, RFC 6525 RE-CONFIG): what they hold and
how each encodes.

Only the chunks a WebRTC data channel needs. Each chunk's ``encode()`` gives its padded
bytes; :mod:`._packets` decodes packets into these objects and seals encoded chunks
into packets (common header and CRC32c), so the association can bundle pre-encoded
chunks (retransmissions reuse their bytes) without building objects on the fast path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "DATA_BEGINNING",
    "DATA_END",
    "DATA_HEADER",
    "DATA_IMMEDIATE",
    "DATA_UNORDERED",
    "PARAM_FORWARD_TSN_SUPPORTED",
    "PARAM_STATE_COOKIE",
    "PARAM_SUPPORTED_EXTENSIONS",
    "PARAM_ZERO_CHECKSUM_ACCEPTABLE",
    "ZERO_CHECKSUM_DTLS",
    "AbortChunk",
    "Chunk",
    "CookieAckChunk",
    "CookieEchoChunk",
    "DataChunk",
    "ErrorChunk",
    "ForwardTsnChunk",
    "HeartbeatAckChunk",
    "HeartbeatChunk",
    "InitAckChunk",
    "InitChunk",
    "OutgoingResetRequest",
    "ReconfigChunk",
    "ReconfigResponse",
    "SackChunk",
    "ShutdownAckChunk",
    "ShutdownChunk",
    "ShutdownCompleteChunk",
    "UnknownChunk",
    "UnknownReconfigParam",
]

# DATA chunk flags (RFC 9260 3.3.1; I is RFC 7053 SACK-IMMEDIATELY).
DATA_END = 0x01
DATA_BEGINNING = 0x02
DATA_UNORDERED = 0x04
DATA_IMMEDIATE = 0x08

PARAM_STATE_COOKIE = 7
PARAM_SUPPORTED_EXTENSIONS = 0x8008
PARAM_FORWARD_TSN_SUPPORTED = 0xC000
# RFC 9653: "Zero Checksum Acceptable", with the error detection method DTLS (EDMID 1).
PARAM_ZERO_CHECKSUM_ACCEPTABLE = 0x8001
ZERO_CHECKSUM_DTLS = b"\x00\x00\x00\x01"
_ZERO = b"\x00\x00\x00\x00"  # a zero checksum (RFC 9653), and the CRC32c field while computing it

_CHUNK_HEADER = struct.Struct("!BBH")
DATA_HEADER = struct.Struct("!BBHIHHI")
_INIT = struct.Struct("!IIHHI")
_SACK = struct.Struct("!IIHH")
_TLV = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_PAIR16 = struct.Struct("!HH")
_RESET_REQ = struct.Struct("!III")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")

Params = list[tuple[int, bytes]]


def _chunk(ctype: int, flags: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return _CHUNK_HEADER.pack(ctype, flags, length) + value + _PADDING[length & 3]


def _encode_tlvs(params: Iterable[tuple[int, bytes]]) -> bytes:
    # RFC 9260 3.2: the chunk length covers the padding of every parameter but the last
    # (whose padding is the chunk's own).
    out = []
    for ptype, pvalue in params:
        length = 4 + len(pvalue)
        out.append(_TLV.pack(ptype, length) + pvalue)
        out.append(_PADDING[length & 3])
    if out:
        out.pop()
    return b"".join(out)


@dataclass(slots=True)
class DataChunk:
    """One fragment of a user message; ``flags`` holds the U/B/E/I bits."""

    type: ClassVar[int] = 0
    tsn: int
    stream_id: int
    ssn: int
    ppid: int
    user_data: bytes
    flags: int = DATA_BEGINNING | DATA_END

    def encode(self) -> bytes:
        length = 16 + len(self.user_data)
        return (
            DATA_HEADER.pack(0, self.flags, length, self.tsn, self.stream_id, self.ssn, self.ppid)
            + self.user_data
            + _PADDING[length & 3]
        )


@dataclass(slots=True)
class InitChunk:
    type: ClassVar[int] = 1
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: Params = field(default_factory=list)

    def encode(self) -> bytes:
        fixed = _INIT.pack(
            self.initiate_tag,
            self.a_rwnd,
            self.outbound_streams,
            self.inbound_streams,
            self.initial_tsn,
        )
        return _chunk(self.type, 0, fixed + _encode_tlvs(self.params))

    def param(self, ptype: int) -> bytes | None:
        for t, v in self.params:
            if t == ptype:
                return v
        return None

    @property
    def forward_tsn_supported(self) -> bool:
        exts = self.param(PARAM_SUPPORTED_EXTENSIONS) or b""
        return self.param(PARAM_FORWARD_TSN_SUPPORTED) is not None or 192 in exts

    @property
    def zero_checksum_dtls(self) -> bool:
        """RFC 9653: the sender accepts packets with a zero checksum (DTLS protects them)."""
        return self.param(PARAM_ZERO_CHECKSUM_ACCEPTABLE) == ZERO_CHECKSUM_DTLS

    @property
    def reconfig_supported(self) -> bool:
        return 130 in (self.param(PARAM_SUPPORTED_EXTENSIONS) or b"")


@dataclass(slots=True)
class InitAckChunk(InitChunk):
    type: ClassVar[int] = 2

    @property
    def state_cookie(self) -> bytes | None:
        return self.param(PARAM_STATE_COOKIE)


@dataclass(slots=True)
class SackChunk:
    """``gaps`` are (start, end) offsets from ``cum_tsn``, both inclusive."""

    type: ClassVar[int] = 3
    cum_tsn: int
    a_rwnd: int
    gaps: list[tuple[int, int]] = field(default_factory=list)
    dups: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        parts = [_SACK.pack(self.cum_tsn, self.a_rwnd, len(self.gaps), len(self.dups))]
        parts.extend(_PAIR16.pack(s, e) for s, e in self.gaps)
        parts.extend(_U32.pack(d) for d in self.dups)
        return _chunk(3, 0, b"".join(parts))


@dataclass(slots=True)
class HeartbeatChunk:
    """Carries one Heartbeat Info parameter; the sender alone interprets ``info``."""

    type: ClassVar[int] = 4
    info: bytes

    def encode(self) -> bytes:
        return _chunk(self.type, 0, _encode_tlvs([(1, self.info)]))


@dataclass(slots=True)
class HeartbeatAckChunk(HeartbeatChunk):
    type: ClassVar[int] = 5


@dataclass(slots=True)
class AbortChunk:
    """``t_bit``: the verification tag is the sender's own (reflected) tag."""

    type: ClassVar[int] = 6
    causes: Params = field(default_factory=list)
    t_bit: bool = False

    def encode(self) -> bytes:
        return _chunk(self.type, int(self.t_bit), _encode_tlvs(self.causes))


@dataclass(slots=True)
class ShutdownChunk:
    type: ClassVar[int] = 7
    cum_tsn: int

    def encode(self) -> bytes:
        return _chunk(7, 0, _U32.pack(self.cum_tsn))


@dataclass(slots=True)
class ShutdownAckChunk:
    type: ClassVar[int] = 8

    def encode(self) -> bytes:
        return _chunk(8, 0, b"")


@dataclass(slots=True)
class ErrorChunk:
    type: ClassVar[int] = 9
    causes: Params = field(default_factory=list)

    def encode(self) -> bytes:
        return _chunk(9, 0, _encode_tlvs(self.causes))


@dataclass(slots=True)
class CookieEchoChunk:
    type: ClassVar[int] = 10
    cookie: bytes

    def encode(self) -> bytes:
        return _chunk(10, 0, self.cookie)


@dataclass(slots=True)
class CookieAckChunk:
    type: ClassVar[int] = 11

    def encode(self) -> bytes:
        return _chunk(11, 0, b"")


@dataclass(slots=True)
class ShutdownCompleteChunk:
    type: ClassVar[int] = 14
    t_bit: bool = False

    def encode(self) -> bytes:
        return _chunk(14, int(self.t_bit), b"")


@dataclass(slots=True)
class ForwardTsnChunk:
    """``streams``: (stream id, last skipped SSN) for ordered streams only."""

    type: ClassVar[int] = 192
    new_cum_tsn: int
    streams: list[tuple[int, int]] = field(default_factory=list)

    def encode(self) -> bytes:
        body = _U32.pack(self.new_cum_tsn) + b"".join(_PAIR16.pack(s, n) for s, n in self.streams)
        return _chunk(192, 0, body)


@dataclass(slots=True, frozen=True)
class OutgoingResetRequest:
    """RFC 6525 4.1: the sender resets its outgoing SSNs of ``streams`` (empty = all)."""

    request_seq: int
    response_seq: int
    last_tsn: int
    streams: tuple[int, ...] = ()

    def encode(self) -> tuple[int, bytes]:
        body = _RESET_REQ.pack(self.request_seq, self.response_seq, self.last_tsn)
        return 13, body + b"".join(struct.pack("!H", s) for s in self.streams)


@dataclass(slots=True, frozen=True)
class ReconfigResponse:
    """RFC 6525 4.4; result 0 nothing to do, 1 performed, 2 denied, 5 bad seq, 6 in progress."""

    response_seq: int
    result: int

    def encode(self) -> tuple[int, bytes]:
        return 16, struct.pack("!II", self.response_seq, self.result)


@dataclass(slots=True, frozen=True)
class UnknownReconfigParam:
    param_type: int
    value: bytes

    def encode(self) -> tuple[int, bytes]:
        return self.param_type, self.value


ReconfigParam = OutgoingResetRequest | ReconfigResponse | UnknownReconfigParam


@dataclass(slots=True)
class ReconfigChunk:
    type: ClassVar[int] = 130
    params: list[ReconfigParam] = field(default_factory=list)

    def encode(self) -> bytes:
        return _chunk(130, 0, _encode_tlvs(p.encode() for p in self.params))


@dataclass(slots=True)
class UnknownChunk:
    """A chunk type we do not implement; its top two bits say how to react (RFC 9260 3.2)."""

    chunk_type: int
    flags: int
    value: bytes

    @property
    def type(self) -> int:
        return self.chunk_type

    def encode(self) -> bytes:
        return _chunk(self.chunk_type, self.flags, self.value)


Chunk = (
    DataChunk
    | InitChunk
    | InitAckChunk
    | SackChunk
    | HeartbeatChunk
    | HeartbeatAckChunk
    | AbortChunk
    | ShutdownChunk
    | ShutdownAckChunk
    | ErrorChunk
    | CookieEchoChunk
    | CookieAckChunk
    | ShutdownCompleteChunk
    | ForwardTsnChunk
    | ReconfigChunk
    | UnknownChunk
)
