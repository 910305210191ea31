"""The topic wire format (docs/PROTOCOL.md, "Topics"): one frame, many records.

A frame is ``version (u8) | record*``; a record is ``kind (u8) | length (u32) | body``.
Bodies are built from length-prefixed fields: a topic is ``u8 length | UTF-8``, a
peer id is ``u8 length | multihash``, a message id is ``MESSAGE_ID_SIZE`` bytes.
Every field is bounded, and :func:`parse_frame_untrusted` raises only
:class:`GossipParseError` whatever bytes it is given.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..errors import GossipParseError, PeerIdError
from ..identity import PeerId

__all__ = [
    "GRAFT",
    "IHAVE",
    "IWANT",
    "MESSAGE_ID_SIZE",
    "PRUNE",
    "PUBLISH",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "VERSION",
    "Control",
    "GossipParseError",
    "Message",
    "encode_frame",
    "encode_record",
    "message_id",
    "parse_frame_untrusted",
    "signed_bytes",
]

VERSION = 1
SUBSCRIBE, UNSUBSCRIBE, PUBLISH, GRAFT, PRUNE, IHAVE, IWANT = 1, 2, 3, 4, 5, 6, 7
MESSAGE_ID_SIZE = 20
SIGNATURE_SIZE = 64
MAX_TOPIC_LENGTH = 255
MAX_IDS_PER_RECORD = 5000  # IHAVE/IWANT; the core applies its own, smaller, caps
_SIGNING_CONTEXT = b"darkswap-topic/1:"
_RECORD = struct.Struct(">BI")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


@dataclass(frozen=True)
class Message:
    """A published message as it travels: signed by ``from_`` (raw multihash)."""

    from_: bytes
    seqno: int
    topic: str
    data: bytes
    signature: bytes

    @property
    def id(self) -> bytes:
        return message_id(self.from_, self.seqno)

    def encode(self) -> bytes:
        return (
            _field8(self.from_)
            + _U64.pack(self.seqno)
            + _topic(self.topic)
            + _U32.pack(len(self.data))
            + self.data
            + self.signature
        )

    def signature_valid(self) -> bool:
        return PeerId(self.from_).verify(
            signed_bytes(self.from_, self.seqno, self.topic, self.data), self.signature
        )


@dataclass(frozen=True)
class Control:
    """A non-PUBLISH record: (UN)SUBSCRIBE/GRAFT (topic), PRUNE (topic, backoff),
    IHAVE (topic, ids), IWANT (ids)."""

    kind: int
    topic: str = ""
    backoff: int = 0
    ids: tuple[bytes, ...] = ()


def message_id(from_: bytes, seqno: int) -> bytes:
    return hashlib.blake2b(_field8(from_) + _U64.pack(seqno), digest_size=MESSAGE_ID_SIZE).digest()


def signed_bytes(from_: bytes, seqno: int, topic: str, data: bytes) -> bytes:
    """What the publisher signs: a context string, then the message without its signature."""
    return (
        _SIGNING_CONTEXT
        + _field8(from_)
        + _U64.pack(seqno)
        + _topic(topic)
        + _U32.pack(len(data))
        + data
    )


def _field8(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def _topic(topic: str) -> bytes:
    raw = topic.encode("utf-8")
    if not 0 < len(raw) <= MAX_TOPIC_LENGTH:
        raise ValueError(f"a topic is 1..{MAX_TOPIC_LENGTH} UTF-8 bytes")
    return _field8(raw)


def check_topic(topic: str) -> str:
    """``topic`` if it can go on the wire; TypeError/ValueError otherwise."""
    if not isinstance(topic, str):
        raise TypeError("a topic is a str")
    _topic(topic)
    return topic


def encode_record(kind: int, body: bytes) -> bytes:
    return _RECORD.pack(kind, len(body)) + body


def encode_control(control: Control) -> bytes:
    kind = control.kind
    if kind in (SUBSCRIBE, UNSUBSCRIBE, GRAFT):
        body = _topic(control.topic)
    elif kind == PRUNE:
        body = _topic(control.topic) + _U16.pack(min(control.backoff, 0xFFFF))
    elif kind == IHAVE:
        body = _topic(control.topic) + _U16.pack(len(control.ids)) + b"".join(control.ids)
    elif kind == IWANT:
        body = _U16.pack(len(control.ids)) + b"".join(control.ids)
    else:
        raise ValueError(f"not a control kind: {kind}")
    return encode_record(kind, body)


def encode_frame(records: list[bytes]) -> bytes:
    return bytes([VERSION]) + b"".join(records)


# -- parsing (untrusted) ----------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise GossipParseError("truncated field")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def unpack(self, fmt: struct.Struct) -> int:
        value: int = fmt.unpack(self.take(fmt.size))[0]
        return value

    def topic(self) -> str:
        raw = self.take(self.u8())
        if not raw:
            raise GossipParseError("empty topic")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GossipParseError("topic is not UTF-8") from None

    def ids(self) -> tuple[bytes, ...]:
        count = self.unpack(_U16)
        if count > MAX_IDS_PER_RECORD:
            raise GossipParseError(f"{count} message ids in one record")
        raw = self.take(count * MESSAGE_ID_SIZE)
        return tuple(raw[i : i + MESSAGE_ID_SIZE] for i in range(0, len(raw), MESSAGE_ID_SIZE))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise GossipParseError("trailing bytes in record")


def _parse_message(body: bytes, max_data: int) -> Message:
    r = _Reader(body)
    from_ = r.take(r.u8())
    try:
        PeerId._from_multihash(from_, "publisher")  # validates the multihash, PeerIdError only
    except PeerIdError as exc:
        raise GossipParseError(f"bad publisher id: {exc}") from None
    seqno = r.unpack(_U64)
    topic = r.topic()
    size = r.unpack(_U32)
    if size > max_data:
        raise GossipParseError(f"message data of {size} bytes exceeds {max_data}")
    data = r.take(size)
    signature = r.take(SIGNATURE_SIZE)
    r.end()
    return Message(from_, seqno, topic, data, signature)


def _parse_control(kind: int, body: bytes) -> Control:
    r = _Reader(body)
    if kind in (SUBSCRIBE, UNSUBSCRIBE, GRAFT):
        control = Control(kind, r.topic())
    elif kind == PRUNE:
        control = Control(kind, r.topic(), backoff=r.unpack(_U16))
    elif kind == IHAVE:
        topic = r.topic()
        control = Control(kind, topic, ids=r.ids())
    else:
        control = Control(kind, ids=r.ids())
    r.end()
    return control


def parse_frame_untrusted(
    data: bytes, *, max_data: int = 1 << 20, max_records: int = 10_000
) -> list[Message | Control]:
    """Every record of a frame; raises only :class:`GossipParseError`.

    Unknown record kinds are skipped (a later version may add some); a message whose
    data exceeds ``max_data`` or a frame with more than ``max_records`` records is an error.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise GossipParseError("topic frame is not bytes")
    data = bytes(data)
    if not data:
        raise GossipParseError("empty topic frame")
    if data[0] != VERSION:
        raise GossipParseError(f"unsupported topic frame version {data[0]}")
    r = _Reader(data)
    r.pos = 1
    records: list[Message | Control] = []
    while r.pos < len(data):
        if len(records) >= max_records:
            raise GossipParseError("too many records in one frame")
        kind = r.u8()
        body = r.take(r.unpack(_U32))
        if kind == PUBLISH:
            records.append(_parse_message(body, max_data))
        elif SUBSCRIBE <= kind <= IWANT:
            records.append(_parse_control(kind, body))
    return records
