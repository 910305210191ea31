"""DTLS record layer framing (RFC 6347 §4.1): parse, classify and pack records.

OpenSSL writes a whole handshake flight into its memory BIO as one run of bytes,
so the datagram boundaries it intended are lost. We recover them by splitting
the run into records and packing whole records into datagrams no larger than
the path MTU: a record split across two datagrams would be dropped by the peer.

Everything here is pure; :func:`parse_records_untrusted` reads network input and
raises only :class:`~darkswap_trio.proto.errors.DtlsParseError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import DtlsParseError

__all__ = [
    "RECORD_HEADER_LENGTH",
    "ContentType",
    "DtlsRecord",
    "is_dtls",
    "pack_records",
    "parse_records_untrusted",
]

#: type(1) version(2) epoch(2) sequence_number(6) length(2)
RECORD_HEADER_LENGTH = 13

# RFC 6347 §4.1: a DTLSCiphertext fragment is at most 2^14 + 2048 bytes.
_MAX_FRAGMENT_LENGTH = 2**14 + 2048


class ContentType(enum.IntEnum):
    """TLS content types that may appear in a DTLS 1.2 record."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


@dataclass(frozen=True)
class DtlsRecord:
    """One DTLS record: header fields plus the (possibly encrypted) fragment."""

    content_type: ContentType
    version: int
    epoch: int
    sequence_number: int
    fragment: bytes

    def to_bytes(self) -> bytes:
        """Serialise the record back to its wire form."""
        return (
            bytes([self.content_type])
            + self.version.to_bytes(2, "big")
            + self.epoch.to_bytes(2, "big")
            + self.sequence_number.to_bytes(6, "big")
            + len(self.fragment).to_bytes(2, "big")
            + self.fragment
        )

    @property
    def wire_length(self) -> int:
        """Length of the record on the wire, header included."""
        return RECORD_HEADER_LENGTH + len(self.fragment)


def is_dtls(datagram: bytes) -> bool:
    """RFC 7983 demultiplexing: a datagram whose first byte is 20..63 is DTLS."""
    return len(datagram) > 0 and 20 <= datagram[0] <= 63


def parse_records_untrusted(data: bytes) -> list[DtlsRecord]:
    """Split a datagram (or a run of bytes from OpenSSL) into whole DTLS records.

    Raises :class:`DtlsParseError` if ``data`` is empty, a record has an unknown
    content type or a non-DTLS version, or a record's length runs past the end.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DtlsParseError(f"expected bytes, got {type(data).__name__}")
    view = bytes(data)
    if not view:
        raise DtlsParseError("empty datagram")
    records: list[DtlsRecord] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < RECORD_HEADER_LENGTH:
            raise DtlsParseError(
                f"truncated record header at offset {offset}: "
                f"{len(view) - offset} of {RECORD_HEADER_LENGTH} bytes"
            )
        raw_type = view[offset]
        try:
            content_type = ContentType(raw_type)
        except ValueError:
            raise DtlsParseError(f"unknown DTLS content type {raw_type}") from None
        version = int.from_bytes(view[offset + 1 : offset + 3], "big")
        # DTLS versions are one's complement: 1.0 is 0xFEFF, 1.2 is 0xFEFD.
        if version >> 8 != 0xFE:
            raise DtlsParseError(f"not a DTLS record version: 0x{version:04x}")
        epoch = int.from_bytes(view[offset + 3 : offset + 5], "big")
        sequence_number = int.from_bytes(view[offset + 5 : offset + 11], "big")
        length = int.from_bytes(view[offset + 11 : offset + 13], "big")
        if length > _MAX_FRAGMENT_LENGTH:
            raise DtlsParseError(f"record fragment too long: {length} bytes")
        start = offset + RECORD_HEADER_LENGTH
        end = start + length
        if end > len(view):
            raise DtlsParseError(
                f"record at offset {offset} claims {length} bytes, {len(view) - start} remain"
            )
        records.append(DtlsRecord(content_type, version, epoch, sequence_number, view[start:end]))
        offset = end
    return records


def pack_records(records: Iterable[DtlsRecord], mtu: int) -> list[bytes]:
    """Pack whole records, in order, into as few datagrams of at most ``mtu`` bytes.

    A record longer than ``mtu`` (OpenSSL never makes one once the MTU is set)
    travels alone rather than being split, since a split record is undecodable.
    """
    datagrams: list[bytes] = []
    current = bytearray()
    for record in records:
        wire = record.to_bytes()
        if current and len(current) + len(wire) > mtu:
            datagrams.append(bytes(current))
            current = bytearray()
        current += wire
    if current:
        datagrams.append(bytes(current))
    return datagrams
