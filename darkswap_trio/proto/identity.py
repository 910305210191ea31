"""Peer identity: Ed25519 keys and libp2p PeerIds.

A PeerId is the base58btc multihash of the protobuf-encoded public key
(libp2p peer-ids spec). Ed25519 keys are small enough to be inlined with the
identity multihash, which yields the familiar ``12D3KooW...`` form and lets anyone
recover the public key from the id alone: that is what makes proof of ownership
possible without a key directory.

Pure codecs and key operations, no I/O: the SDK keeps its key file in
``darkswap_trio._identity``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import _ed25519
from .errors import PeerIdError


def b58encode(data: bytes) -> str:
    """base58btc (the Bitcoin alphabet, as libp2p PeerIds use it)."""
    return base58.b58encode(data).decode("ascii")


_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_VALUES = {byte: value for value, byte in enumerate(_B58_ALPHABET)}


def b58decode(text: str) -> bytes:
    """Decode base58btc; ValueError on any character outside the alphabet (whitespace too).

    Our own loop, not ``base58.b58decode``: that one divides the number down byte by
    byte (~10 us for a peer id, on every registration a relay checks; this is ~3 us).
    """
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("base58 text must be ASCII") from None
    digits = data.lstrip(b"1")  # each leading '1' is a leading zero byte
    value = 0
    values = _B58_VALUES
    try:
        for byte in digits:
            value = value * 58 + values[byte]
    except KeyError as exc:
        raise ValueError(f"invalid base58 character {chr(exc.args[0])!r}") from None
    return bytes(len(data) - len(digits)) + value.to_bytes((value.bit_length() + 7) // 8, "big")


# libp2p crypto.proto KeyType values.
KEY_TYPE_RSA = 0
KEY_TYPE_ED25519 = 1
KEY_TYPE_SECP256K1 = 2
KEY_TYPE_ECDSA = 3
_KEY_TYPES = {KEY_TYPE_RSA, KEY_TYPE_ED25519, KEY_TYPE_SECP256K1, KEY_TYPE_ECDSA}

MULTIHASH_IDENTITY = 0x00
MULTIHASH_SHA2_256 = 0x12
# Keys whose protobuf encoding is at most this long are inlined (identity multihash).
_MAX_INLINE_KEY_LENGTH = 42
# A peer id string longer than this is refused before any decoding work.
MAX_PEER_ID_LENGTH = 128
# CIDv1 form of a peer id (libp2p peer-ids spec): multibase base32 lower ('b'), CID
# version 1, multicodec libp2p-key. Parsed; printed only on request (base58 is the default).
CID_VERSION_1 = 0x01
MULTICODEC_LIBP2P_KEY = 0x72
_BASE32_LOWER = re.compile(r"b[a-z2-7]+")


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise PeerIdError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise PeerIdError("varint too long")


def _encode_key_protobuf(key_type: int, data: bytes) -> bytes:
    # message PublicKey/PrivateKey { required KeyType Type = 1; required bytes Data = 2; }
    assert len(data) < 128
    return bytes([0x08, key_type, 0x12, len(data)]) + data


def _decode_key_protobuf(buf: bytes) -> tuple[int, bytes]:
    """Decode a libp2p PublicKey/PrivateKey protobuf (untrusted)."""
    key_type: int | None = None
    data: bytes | None = None
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 1 and wire == 0:
            key_type, pos = _read_varint(buf, pos)
        elif field == 2 and wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise PeerIdError("truncated key data")
            data = buf[pos : pos + length]
            pos += length
        else:
            raise PeerIdError(f"unexpected protobuf field {field} (wire type {wire})")
    if key_type is None or data is None:
        raise PeerIdError("key protobuf lacks Type or Data")
    if key_type not in _KEY_TYPES:
        raise PeerIdError(f"unknown key type {key_type}")
    return key_type, data


@dataclass(frozen=True, order=True)
class PeerId:
    """A validated libp2p peer id. Construct with :meth:`from_string` or :meth:`from_public_key`."""

    multihash: bytes

    @classmethod
    def from_public_key(cls, public_key: Ed25519PublicKey) -> PeerId:
        raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        proto = _encode_key_protobuf(KEY_TYPE_ED25519, raw)
        return cls(bytes([MULTIHASH_IDENTITY, len(proto)]) + proto)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse and validate a peer id (untrusted input; raises PeerIdError).

        Accepts the base58btc multihash (``12D3KooW…``, ``Qm…``) and the CIDv1 form
        (``bafz…``: base32 lower, libp2p-key codec), as the libp2p spec requires.
        """
        if not isinstance(text, str):
            raise PeerIdError(f"peer id must be a string, not {type(text).__name__}")
        if not text or len(text) > MAX_PEER_ID_LENGTH:
            raise PeerIdError(f"peer id has invalid length {len(text)}")
        if text[0] == "b":
            return cls._from_cid(text)
        try:
            raw = b58decode(text)
        except ValueError as exc:
            raise PeerIdError(f"invalid peer id {text!r}: {exc}") from None
        # Text made only of the alphabet (b58decode refuses anything else) has one
        # decoding whose encoding is the text again (leading '1's are leading zero bytes
        # both ways): the text is canonical, no re-encoding check is needed.
        peer = cls._from_multihash(raw, text)
        peer.__dict__["_text"] = text  # the cached str(); cached_property's own slot
        return peer

    @classmethod
    def _from_multihash(cls, raw: bytes, text: str) -> PeerId:
        code, pos = _read_varint(raw, 0)
        length, pos = _read_varint(raw, pos)
        digest = raw[pos:]
        if len(digest) != length:
            raise PeerIdError(f"invalid peer id {text!r}: multihash length mismatch")
        inline: tuple[int, bytes] | None = None
        if code == MULTIHASH_IDENTITY:
            if length > _MAX_INLINE_KEY_LENGTH:
                raise PeerIdError(f"invalid peer id {text!r}: inlined key too long")
            inline = key_type, data = _decode_key_protobuf(digest)
            if key_type == KEY_TYPE_ED25519 and len(data) != 32:
                raise PeerIdError(f"invalid peer id {text!r}: Ed25519 key is not 32 bytes")
        elif code == MULTIHASH_SHA2_256:
            if length != 32:
                raise PeerIdError(f"invalid peer id {text!r}: sha2-256 digest is not 32 bytes")
        else:
            raise PeerIdError(f"invalid peer id {text!r}: unsupported multihash 0x{code:x}")
        peer = cls(raw)
        peer.__dict__["_inline_key"] = inline  # decoded once (cached_property's slot)
        return peer

    @classmethod
    def _from_cid(cls, text: str) -> PeerId:
        if not _BASE32_LOWER.fullmatch(text):
            raise PeerIdError(
                f"invalid peer id {text!r}: not base32 lower after the 'b' multibase prefix"
            )
        body = text[1:]
        try:
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        except (binascii.Error, ValueError) as exc:
            raise PeerIdError(f"invalid peer id {text!r}: {exc}") from None
        version, pos = _read_varint(raw, 0)
        codec, pos = _read_varint(raw, pos)
        if version != CID_VERSION_1:
            raise PeerIdError(f"invalid peer id {text!r}: CID version {version}, expected 1")
        if codec != MULTICODEC_LIBP2P_KEY:
            raise PeerIdError(
                f"invalid peer id {text!r}: CID codec 0x{codec:x} is not libp2p-key (0x72)"
            )
        peer = cls._from_multihash(raw[pos:], text)
        if peer.to_cid() != text:
            raise PeerIdError(f"invalid peer id {text!r}: non-canonical encoding")
        return peer

    def to_cid(self) -> str:
        """The CIDv1 form (``bafz…``); ``str()`` stays base58btc."""
        raw = bytes([CID_VERSION_1, MULTICODEC_LIBP2P_KEY]) + self.multihash
        return "b" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    @cached_property
    def _text(self) -> str:
        # Cached: a relay names peers by this string several times per registration.
        return b58encode(self.multihash)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"PeerId({str(self)!r})"

    @cached_property
    def _inline_key(self) -> tuple[int, bytes] | None:
        # (key type, key bytes) of an identity multihash; a relay asks for them several
        # times per registration (is_ed25519, the public key).
        if self.multihash[0] != MULTIHASH_IDENTITY:
            return None
        return _decode_key_protobuf(self.multihash[2:])

    @property
    def key_type(self) -> int | None:
        """The inlined key's libp2p type, or None for hashed (e.g. RSA) ids."""
        inline = self._inline_key
        return None if inline is None else inline[0]

    @property
    def is_ed25519(self) -> bool:
        """True when the id inlines an Ed25519 public key (only those can sign a proof)."""
        return self.key_type == KEY_TYPE_ED25519

    def ed25519_public_key(self) -> Ed25519PublicKey:
        """The Ed25519 key this id inlines; PeerIdError if it inlines none."""
        key = self._public_key
        if key is None:
            raise PeerIdError(f"{self} does not inline an Ed25519 key")
        return key

    @cached_property
    def _public_key(self) -> Ed25519PublicKey | None:
        # Cached: a client verifies its relay's proof on every (re)registration.
        inline = self._inline_key
        if inline is None or inline[0] != KEY_TYPE_ED25519:
            return None
        data = inline[1]
        try:
            return Ed25519PublicKey.from_public_bytes(data)
        except ValueError:  # pragma: no cover - 32 bytes always load
            return None

    @cached_property
    def _verifier(self) -> Callable[[bytes, bytes], bool] | None:
        # Cached like the key: libsodium's when installed (proto._ed25519).
        inline = self._inline_key
        if inline is None or inline[0] != KEY_TYPE_ED25519:
            return None
        return _ed25519.verifier(inline[1])

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this peer's Ed25519 signature of ``message``."""
        verify = self._verifier
        return verify is not None and verify(message, signature)


def parse_peer_id(text: str) -> PeerId:
    """Parse a peer id string; raises :class:`PeerIdError` with the offending text."""
    return PeerId.from_string(text)


def peer_id_text(value: PeerId | str, what: str = "peer_id") -> str:
    """The canonical base58 text of a peer id argument given as ``PeerId | str``.

    For public calls to check their argument where it is passed: TypeError for any
    other type, PeerIdError (a ValueError) for a string that is not a peer id.
    """
    if isinstance(value, PeerId):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a PeerId or str, not {type(value).__name__}")
    return str(PeerId.from_string(value))


class Keypair:
    """An Ed25519 identity keypair."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._sign: Callable[[bytes], bytes] | None = None
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.peer_id: PeerId = PeerId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Keypair:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        sign = self._sign
        if sign is None:  # built on first use: libsodium's when installed (proto._ed25519)
            sign = self._sign = _ed25519.signer(self.seed(), self._private_key.sign)
        return sign(message)

    def seed(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        return self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def to_protobuf(self) -> bytes:
        """libp2p PrivateKey protobuf (Data = seed || public key, as go-libp2p writes it)."""
        pub = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return _encode_key_protobuf(KEY_TYPE_ED25519, self.seed() + pub)

    @classmethod
    def from_protobuf(cls, buf: bytes) -> Keypair:
        """Read a libp2p PrivateKey protobuf: Data is the 32-byte seed, seed || public
        key (64), or the old 96-byte form go-libp2p still reads (seed || public key ||
        a redundant copy of the public key); every public copy must match the seed."""
        key_type, data = _decode_key_protobuf(buf)
        if key_type != KEY_TYPE_ED25519 or len(data) not in (32, 64, 96):
            raise PeerIdError("key file does not hold an Ed25519 private key")
        pair = cls.from_seed(data[:32])
        public = pair.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        if any(data[i : i + 32] != public for i in range(32, len(data), 32)):
            raise PeerIdError("key file's public half does not match its private key")
        return pair

    def __repr__(self) -> str:
        return f"Keypair(peer_id={self.peer_id})"
