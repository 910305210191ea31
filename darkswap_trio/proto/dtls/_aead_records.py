"""DTLS 1.2 record protection with AES-GCM after OpenSSL's handshake: one C call per record.

OpenSSL negotiates the association; once it is up, a data channel transfer is one
application-data record per datagram, tens of thousands a second, and each record
through OpenSSL is four C calls (write, read the BIO; write the BIO, read) behind
pyOpenSSL's handles. For the AES-GCM suites (what browsers, aiortc and we prefer)
:class:`AeadRecords` protects records itself with ``cryptography``'s AESGCM, one call
each way, with the keys of the TLS 1.2 key block (RFC 5246 6.3) derived from the
session's master secret and randoms (with the extended master secret, RFC 7627, the
master secret is the extended one; the key block is derived the same way):

* record: type, version, epoch and 48-bit sequence number, length (RFC 6347 4.1),
  then the 8-byte explicit nonce (we use epoch and sequence number, RFC 5288 3's
  suggestion; the peer's may be anything), the ciphertext and the 16-byte tag;
* nonce: the 4-byte write IV from the key block, then the explicit nonce; additional
  data: epoch and sequence number, type, version, plaintext length (RFC 5246 6.2.3.3);
* replays: a 64-record sliding window (RFC 6347 4.1.2.6), moved only by authentic
  records; records of another epoch or that fail authentication are dropped silently.

Any other suite returns None from :func:`aead_records`: the endpoint keeps OpenSSL's
record layer. :meth:`AeadRecords.open_untrusted` reads network input and raises only
:class:`~darkswap_trio.proto.errors.DtlsParseError`.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import DtlsParseError

__all__ = ["AEAD_SUITES", "AeadRecords", "aead_records", "tls12_prf"]

#: OpenSSL suite name -> (AES key length, PRF hash).
AEAD_SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": (16, "sha256"),
    "ECDHE-ECDSA-AES256-GCM-SHA384": (32, "sha384"),
    "ECDHE-RSA-AES128-GCM-SHA256": (16, "sha256"),
    "ECDHE-RSA-AES256-GCM-SHA384": (32, "sha384"),
}

_HEADER = struct.Struct("!BHQH")  # type, version, epoch << 48 | sequence, length
_HEADER_NONCE = struct.Struct("!BHQHQ")  # and the explicit nonce
_AAD = struct.Struct("!QBHH")  # epoch << 48 | sequence, type, version, plaintext length
_HEADER_LENGTH = 13
_OVERHEAD = 8 + 16  # explicit nonce, tag
_DTLS_1_2 = 0xFEFD
_SEQUENCE_MASK = (1 << 48) - 1
_WINDOW = 64


def tls12_prf(secret: bytes, label: bytes, seed: bytes, size: int, hash_name: str) -> bytes:
    """RFC 5246 5: PRF(secret, label, seed) = P_<hash>(secret, label + seed), ``size`` bytes."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < size:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return bytes(out[:size])


class AeadRecords:
    """Seals our records and opens the peer's, for one epoch each way.

    ``next_write_sequence``: the first sequence number OpenSSL has not used in
    ``epoch`` (its Finished was sent in it)."""

    __slots__ = (
        "_read",
        "_read_epoch",
        "_read_salt",
        "_read_top",
        "_window",
        "_write",
        "_write_epoch",
        "_write_salt",
        "_write_sequence",
        "dropped",
    )

    def __init__(
        self,
        write_key: bytes,
        write_salt: bytes,
        read_key: bytes,
        read_salt: bytes,
        epoch: int,
        next_write_sequence: int,
    ) -> None:
        self._write = AESGCM(write_key)
        self._write_salt = write_salt
        self._write_epoch = epoch << 48
        self._write_sequence = next_write_sequence
        self._read = AESGCM(read_key)
        self._read_salt = read_salt
        self._read_epoch = epoch
        self._read_top = -1  # highest authentic sequence number seen
        self._window = 0  # bit i: sequence number top - i was seen
        self.dropped = 0  # records of another epoch, replayed or not authentic

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        """One record carrying ``plaintext`` (at most 2^14 bytes, the caller's check)."""
        sequence = self._write_sequence
        if sequence > _SEQUENCE_MASK:  # 2^48 records: never, but never reuse a nonce
            raise OverflowError("DTLS sequence numbers exhausted")
        self._write_sequence = sequence + 1
        number = self._write_epoch | sequence
        size = len(plaintext)
        head = _HEADER_NONCE.pack(content_type, _DTLS_1_2, number, size + _OVERHEAD, number)
        sealed = self._write.encrypt(
            self._write_salt + head[13:],
            plaintext,
            _AAD.pack(number, content_type, _DTLS_1_2, size),
        )
        return head + sealed

    def open_untrusted(self, record: bytes) -> tuple[int, bytes] | None:
        """(content type, plaintext) of ``record``, exactly one record; None if it is of
        another epoch, replayed or not authentic (DTLS drops those silently).

        Raises :class:`DtlsParseError` if ``record`` is not one protected record."""
        size = len(record)
        if size < _HEADER_LENGTH + _OVERHEAD:
            raise DtlsParseError(f"protected record of {size} bytes is too short")
        content_type, version, number, length = _HEADER.unpack_from(record)
        if length != size - _HEADER_LENGTH:
            raise DtlsParseError(f"record claims {length} bytes, {size - 13} follow the header")
        if number >> 48 != self._read_epoch:
            self.dropped += 1
            return None
        sequence = number & _SEQUENCE_MASK
        top = self._read_top
        if sequence <= top and (top - sequence >= _WINDOW or self._window >> (top - sequence) & 1):
            self.dropped += 1
            return None
        try:
            plaintext = self._read.decrypt(
                self._read_salt + record[13:21],
                record[21:],
                _AAD.pack(number, content_type, version, length - _OVERHEAD),
            )
        except InvalidTag:
            self.dropped += 1
            return None
        if sequence > top:
            shift = sequence - top
            self._window = (self._window << shift | 1) & 0xFFFFFFFFFFFFFFFF if shift < 64 else 1
            self._read_top = sequence
        else:
            self._window |= 1 << (top - sequence)
        return content_type, plaintext


def aead_records(
    connection: Any, role: str, epoch: int, next_write_sequence: int
) -> AeadRecords | None:
    """:class:`AeadRecords` for a connected pyOpenSSL ``connection`` whose suite is one of
    :data:`AEAD_SUITES`; None for any other suite (or a pyOpenSSL without the secrets)."""
    suite = AEAD_SUITES.get(connection.get_cipher_name() or "")
    if suite is None:
        return None
    key_length, hash_name = suite
    try:
        master = connection.master_key()
        client_random, server_random = connection.client_random(), connection.server_random()
    except (AttributeError, NotImplementedError):  # pragma: no cover - an odd pyOpenSSL
        return None
    if not master or not client_random or not server_random:
        return None
    block = tls12_prf(
        master, b"key expansion", server_random + client_random, 2 * key_length + 8, hash_name
    )
    client_key, server_key = block[:key_length], block[key_length : 2 * key_length]
    client_salt, server_salt = block[2 * key_length : 2 * key_length + 4], block[-4:]
    if role == "client":
        return AeadRecords(
            client_key, client_salt, server_key, server_salt, epoch, next_write_sequence
        )
    return AeadRecords(server_key, server_salt, client_key, client_salt, epoch, next_write_sequence)
