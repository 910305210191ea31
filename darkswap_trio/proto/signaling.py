"""darkswap-relay/1 signaling messages: frozen dataclasses and a strict codec.

The normative description is docs/PROTOCOL.md. JSON text frames use the original
DarkSwap envelope ``{"type": <PascalCase>, "payload": {...}}``; circuit data and
credit travel in binary frames (section 5 of the protocol).

``decode_message_untrusted`` and ``decode_binary_untrusted`` parse network input and
raise only :class:`SignalingParseError` (``.code`` says which Error code to answer).
Unknown fields are ignored so that later protocol additions stay compatible.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import SignalingParseError

PROTOCOL_VERSION = "darkswap-relay/1"
NONCE_LENGTH = 32
MAX_ID_LENGTH = 128
PING_NONCE_MAX = 64  # characters of a Ping nonce (an opaque string the peer echoes)

# Characters no id may hold (PROTOCOL.md 3.1): C0/C1 controls and DEL (category Cc), the
# line and paragraph separators (Zl, Zp) and lone surrogates (Cs: no UTF-8 form). Ids are
# echoed in logs, errors and other peers' frames, so none may break a line or a frame.
_FORBIDDEN_ID_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def id_problem(text: str, *, allow_empty: bool = False) -> str | None:
    """Why ``text`` is not a valid id on the wire (PROTOCOL.md 3.1), or None if it is one.

    Peer ids are 1..MAX_ID_LENGTH characters, none a control character, line/paragraph
    separator or surrogate; relay ids (``allow_empty``) may also be empty (a refused
    ``RelayResponse`` carries ``""``). Whether a peer id must also be a libp2p PeerId
    depends on the session (section 2).
    """
    if len(text) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if not text:
        return None if allow_empty else "is empty"
    # Fast path (every libp2p PeerId): printable ASCII holds no forbidden character.
    if text.isascii() and text.isprintable():
        return None
    if _FORBIDDEN_ID_CHARACTER.search(text):
        return "holds a control, line-separator or surrogate character"
    return None


# -- errors -----------------------------------------------------------------------------


class UnknownMessageType(SignalingParseError):
    """A well-formed envelope names a type this codec does not know."""

    code = "unknown_type"


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitLimits:
    """Limits the relay enforces on one circuit (0 = unlimited)."""

    duration: float = 0.0
    data: int = 0
    bandwidth: int = 0
    window: int = 0
    max_data_frame: int = 0


@dataclass(frozen=True, slots=True)
class Register:
    peer_id: str
    protocol: str | None = None
    nonce: bytes | None = None
    signature: bytes | None = None  # 1-RTT registration (PROTOCOL.md 2.1.1)
    token: str | None = None  # ... in jwt mode


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    relay_peer_id: str
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class Authenticate:
    signature: bytes
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    peer_id: str
    relay_peer_id: str
    auth: str
    protocol: str | None = None
    signature: bytes | None = None
    token_expires_at: float | None = None
    limits: dict[str, float] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token: str


@dataclass(frozen=True, slots=True)
class TokenRefreshed:
    expires_at: float


@dataclass(frozen=True, slots=True)
class Offer:
    from_: str
    to: str
    sdp: str


@dataclass(frozen=True, slots=True)
class Answer:
    from_: str
    to: str
    sdp: str


@dataclass(frozen=True, slots=True)
class IceCandidate:
    from_: str
    to: str
    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


@dataclass(frozen=True, slots=True)
class RelayRequest:
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class RelayResponse:
    relay_id: str
    accepted: bool
    error: str | None = None
    code: str | None = None
    to: str | None = None
    limits: CircuitLimits | None = None


@dataclass(frozen=True, slots=True)
class DataChannel:
    peer_id: str
    relay_id: str
    channel: str
    limits: CircuitLimits | None = None


@dataclass(frozen=True, slots=True)
class RelayData:
    from_: str
    relay_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseRelay:
    relay_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Error:
    message: str
    code: str | None = None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: str | None = None  # echoed in the Pong (docs/PROTOCOL.md, "Ping and Pong")


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: str | None = None  # the answered Ping's nonce; None from relays that predate it


@dataclass(frozen=True, slots=True)
class TopicRegister:
    """Register interest in ``topic`` with the relay (topic rendezvous), or withdraw it."""

    topic: str
    leave: bool | None = None


@dataclass(frozen=True, slots=True)
class TopicPeers:
    """The relay's answer to TopicRegister: a random sample of other registered peers."""

    topic: str
    peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnCredentialsRequest:
    """Ask the relay for TURN credentials (PROTOCOL.md 13.9); no fields."""


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """TURN REST API credentials for the session's peer id, and where to use them."""

    username: str
    password: str
    ttl: float  # seconds from now the credentials stay valid
    uris: tuple[str, ...]  # turn: / turns: URIs (RFC 7065) of the relay's TURN service


Message = (
    Register
    | Challenge
    | Authenticate
    | Registered
    | RefreshToken
    | TokenRefreshed
    | Offer
    | Answer
    | IceCandidate
    | RelayRequest
    | RelayResponse
    | DataChannel
    | RelayData
    | CloseRelay
    | Error
    | Ping
    | Pong
    | TopicRegister
    | TopicPeers
    | TurnCredentialsRequest
    | TurnCredentials
)
TOPIC_MAX_BYTES = 255  # UTF-8 bytes of a topic name (as on the topic wire, PROTOCOL.md 14.2)
TOPIC_PEERS_MAX = 64  # peer ids in one TopicPeers
TURN_URIS_MAX = 8  # URIs in one TurnCredentials, each at most 255 ASCII characters
_TURN_URI = re.compile(r"turns?:[\x21-\x7e]{1,249}")

# -- field table ------------------------------------------------------------------------
# (json key, attribute, kind, required, always emitted)
# kinds "id" (a peer id) and "rid" (a relay id, may be empty) are checked by id_problem().
# "always emitted" keeps the original relay's optional fields present as null, because
# clients of the original (serde Option<T>) expect the key.

_Spec = tuple[str, str, str, bool, bool]

_FIELDS: dict[type, tuple[_Spec, ...]] = {
    Register: (
        ("peer_id", "peer_id", "id", True, True),
        ("protocol", "protocol", "str", False, False),
        ("nonce", "nonce", "nonce", False, False),
        ("signature", "signature", "b64", False, False),
        ("token", "token", "str", False, False),
    ),
    Challenge: (
        ("nonce", "nonce", "nonce", True, True),
        ("relay_peer_id", "relay_peer_id", "id", True, True),
        ("signature", "signature", "b64", False, False),
    ),
    Authenticate: (
        ("signature", "signature", "b64", True, True),
        ("token", "token", "str", False, False),
    ),
    Registered: (
        ("peer_id", "peer_id", "id", True, True),
        ("relay_peer_id", "relay_peer_id", "id", True, True),
        ("auth", "auth", "str", True, True),
        ("protocol", "protocol", "str", False, False),
        ("signature", "signature", "b64", False, False),
        ("token_expires_at", "token_expires_at", "number", False, False),
        ("limits", "limits", "numbers", False, False),
    ),
    RefreshToken: (("token", "token", "str", True, True),),
    TokenRefreshed: (("expires_at", "expires_at", "number", True, True),),
    Offer: (
        ("from", "from_", "id", True, True),
        ("to", "to", "id", True, True),
        ("sdp", "sdp", "str", True, True),
    ),
    Answer: (
        ("from", "from_", "id", True, True),
        ("to", "to", "id", True, True),
        ("sdp", "sdp", "str", True, True),
    ),
    IceCandidate: (
        ("from", "from_", "id", True, True),
        ("to", "to", "id", True, True),
        ("candidate", "candidate", "str", True, True),
        ("sdp_mid", "sdp_mid", "str", False, True),
        ("sdp_mline_index", "sdp_mline_index", "int", False, True),
    ),
    RelayRequest: (("from", "from_", "id", True, True), ("to", "to", "id", True, True)),
    RelayResponse: (
        ("relay_id", "relay_id", "rid", True, True),
        ("accepted", "accepted", "bool", True, True),
        ("error", "error", "str", False, True),
        ("code", "code", "str", False, False),
        ("to", "to", "id", False, False),
        ("limits", "limits", "limits", False, False),
    ),
    DataChannel: (
        ("peer_id", "peer_id", "id", True, True),
        ("relay_id", "relay_id", "rid", True, True),
        ("channel", "channel", "str", True, True),
        ("limits", "limits", "limits", False, False),
    ),
    RelayData: (
        ("from", "from_", "id", True, True),
        ("relay_id", "relay_id", "rid", True, True),
        ("data", "data", "b64", True, True),
    ),
    CloseRelay: (
        ("relay_id", "relay_id", "rid", True, True),
        ("reason", "reason", "str", False, False),
    ),
    Error: (
        ("message", "message", "str", True, True),
        ("code", "code", "str", False, False),
        ("ref", "ref", "str", False, False),
    ),
    Ping: (("nonce", "nonce", "ping_nonce", False, False),),
    Pong: (("nonce", "nonce", "ping_nonce", False, False),),
    TopicRegister: (
        ("topic", "topic", "topic", True, True),
        ("leave", "leave", "bool", False, False),
    ),
    TopicPeers: (("topic", "topic", "topic", True, True), ("peers", "peers", "ids", True, True)),
    TurnCredentialsRequest: (),
    TurnCredentials: (
        ("username", "username", "str", True, True),
        ("password", "password", "str", True, True),
        ("ttl", "ttl", "seconds", True, True),
        ("uris", "uris", "uris", True, True),
    ),
}
_BY_NAME: dict[str, type] = {cls.__name__: cls for cls in _FIELDS}
_LIMIT_FIELDS = ("duration", "data", "bandwidth", "window", "max_data_frame")


def message_type(msg: Message) -> str:
    """The envelope ``type`` of a message (its class name)."""
    return type(msg).__name__


# -- decoding ---------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise SignalingParseError(f"non-standard JSON constant {name}")


def _decode_value(kind: str, key: str, value: Any) -> Any:
    if kind == "ping_nonce":
        if not isinstance(value, str) or len(value) > PING_NONCE_MAX:
            raise SignalingParseError(
                f"field {key!r} must be a string of at most {PING_NONCE_MAX} characters"
            )
        return value
    if kind == "topic":
        try:
            size = len(value.encode("utf-8")) if isinstance(value, str) else 0
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
            size = 0
        if not 0 < size <= TOPIC_MAX_BYTES:
            raise SignalingParseError(
                f"field {key!r} must be a topic of 1..{TOPIC_MAX_BYTES} UTF-8 bytes"
            )
        return value
    if kind == "ids":
        if not isinstance(value, list) or len(value) > TOPIC_PEERS_MAX:
            raise SignalingParseError(
                f"field {key!r} must be a list of at most {TOPIC_PEERS_MAX} peer ids"
            )
        for item in value:
            if not isinstance(item, str) or (problem := id_problem(item)):
                raise SignalingParseError(f"field {key!r}: every entry must be a peer id")
        return tuple(value)
    if kind == "uris":
        ok = isinstance(value, list) and 0 < len(value) <= TURN_URIS_MAX
        if not ok or not all(isinstance(v, str) and _TURN_URI.fullmatch(v) for v in value):
            raise SignalingParseError(f"field {key!r} must list 1..{TURN_URIS_MAX} turn(s): URIs")
        return tuple(value)
    if kind == "seconds":  # positive and finite: a JSON 1e400 decodes to inf
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
            raise SignalingParseError(f"field {key!r} must be a positive number of seconds")
        return float(value)
    if kind in ("str", "id", "rid"):
        if not isinstance(value, str):
            raise SignalingParseError(f"field {key!r} must be a string")
        if kind != "str" and (problem := id_problem(value, allow_empty=kind == "rid")):
            raise SignalingParseError(f"field {key!r} {problem}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SignalingParseError(f"field {key!r} must be a boolean")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 16:
            raise SignalingParseError(f"field {key!r} must be an integer 0..65535")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SignalingParseError(f"field {key!r} must be a number")
        return float(value)
    if kind in ("b64", "nonce"):
        if not isinstance(value, str):
            raise SignalingParseError(f"field {key!r} must be a base64 string")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SignalingParseError(f"field {key!r} is not valid base64") from None
        if kind == "nonce" and len(raw) != NONCE_LENGTH:
            raise SignalingParseError(f"field {key!r} must hold {NONCE_LENGTH} bytes")
        return raw
    if kind == "numbers":
        if not isinstance(value, dict):
            raise SignalingParseError(f"field {key!r} must be an object")
        out: dict[str, float] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SignalingParseError(f"field {key}.{k} must be a number")
            out[k] = v
        return out
    if kind == "limits":
        if not isinstance(value, dict):
            raise SignalingParseError(f"field {key!r} must be an object")
        args: dict[str, Any] = {}
        for name in _LIMIT_FIELDS:
            v = value.get(name, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise SignalingParseError(f"field {key}.{name} must be a non-negative number")
            args[name] = float(v) if name == "duration" else int(v)
        return CircuitLimits(**args)
    raise AssertionError(kind)  # pragma: no cover


# Built once: json.loads / json.dumps with any non-default option build a new
# decoder / encoder on every call (a measurable part of a relay's registration).
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"))


def decode_message_untrusted(text: str | bytes) -> Message:
    """Parse one JSON text frame. Raises only SignalingParseError (``.code`` for the reply)."""
    try:
        if type(text) is str and not text.startswith("\ufeff"):
            obj = _JSON_DECODER.decode(text)
        else:  # bytes, or a BOM json.loads rejects with its own message
            obj = json.loads(text, parse_constant=_reject_constant)
    except SignalingParseError:
        raise
    except (ValueError, RecursionError, TypeError):
        raise SignalingParseError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignalingParseError("frame must be a JSON object")
    type_name = obj.get("type")
    if not isinstance(type_name, str):
        raise SignalingParseError("frame lacks a string 'type'")
    cls = _BY_NAME.get(type_name)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {type_name[:64]!r}")
    specs = _FIELDS[cls]
    payload = obj.get("payload")
    if payload is None and not any(spec[3] for spec in specs):
        payload = {}  # e.g. the original {"type":"Ping"}
    if not isinstance(payload, dict):
        raise SignalingParseError(f"{type_name} needs a 'payload' object")
    kwargs = {}
    for key, attr, kind, required, _ in specs:
        value = payload.get(key)
        if value is None:
            if required:
                raise SignalingParseError(f"{type_name} lacks field {key!r}")
            continue
        kwargs[attr] = _decode_value(kind, key, value)
    message: Message = cls(**kwargs)
    return message


# -- encoding ---------------------------------------------------------------------------


def _encode_value(kind: str, value: Any) -> Any:
    if kind in ("b64", "nonce"):
        return base64.b64encode(value).decode("ascii")
    if kind == "limits":
        return {name: getattr(value, name) for name in _LIMIT_FIELDS}
    if kind == "numbers":
        return dict(value)
    if kind in ("ids", "uris"):
        return list(value)
    return value


def encode_message(msg: Message) -> str:
    """Serialise a message to its JSON text frame (compact, key order as documented)."""
    specs = _FIELDS[type(msg)]
    payload: dict[str, Any] = {}
    for key, attr, kind, _required, always in specs:
        value = getattr(msg, attr)
        if value is None:
            if always:
                payload[key] = None
            continue
        payload[key] = _encode_value(kind, value)
    if not payload and isinstance(msg, (Ping, Pong)):
        return json.dumps({"type": type(msg).__name__})  # the original unit form
    return _JSON_ENCODER.encode({"type": type(msg).__name__, "payload": payload})


# -- binary circuit frames --------------------------------------------------------------

FRAME_DATA = 0x01
FRAME_CREDIT = 0x02
RELAY_ID_LENGTH = 16
DATA_HEADER_LENGTH = 1 + RELAY_ID_LENGTH
_CREDIT = struct.Struct("!B16sI")


@dataclass(frozen=True, slots=True)
class CircuitData:
    relay_id: bytes  # the UUID's 16 bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class CircuitCredit:
    relay_id: bytes
    increment: int

    MAX_INCREMENT: ClassVar[int] = 0xFFFFFFFF


def encode_circuit_data(relay_id: bytes, payload: bytes | memoryview) -> bytes:
    return b"\x01" + relay_id + payload


def encode_circuit_credit(relay_id: bytes, increment: int) -> bytes:
    if not 0 < increment <= CircuitCredit.MAX_INCREMENT:
        raise ValueError(f"credit increment {increment} out of range")
    return _CREDIT.pack(FRAME_CREDIT, relay_id, increment)


def decode_binary_untrusted(frame: bytes) -> CircuitData | CircuitCredit:
    """Parse one binary frame. Raises only SignalingParseError."""
    if len(frame) < DATA_HEADER_LENGTH:
        raise SignalingParseError("binary frame shorter than its header")
    kind = frame[0]
    if kind == FRAME_DATA:
        return CircuitData(bytes(frame[1:DATA_HEADER_LENGTH]), bytes(frame[DATA_HEADER_LENGTH:]))
    if kind == FRAME_CREDIT:
        if len(frame) != _CREDIT.size:
            raise SignalingParseError("CREDIT frame must be 21 bytes")
        _, relay_id, increment = _CREDIT.unpack(frame)
        if increment == 0:
            raise SignalingParseError("CREDIT increment must be positive")
        return CircuitCredit(relay_id, increment)
    raise SignalingParseError(f"unknown binary frame kind 0x{kind:02x}")


# -- signed handshake messages (PROTOCOL.md 2.3) ----------------------------------------


def _signed(kind: bytes, nonce: bytes, relay_peer_id: str, peer_id: str) -> bytes:
    return b"darkswap-relay/1 %s\0%s\0%s\0%s" % (
        kind,
        relay_peer_id.encode(),
        peer_id.encode(),
        nonce,
    )


def peer_auth_message(server_nonce: bytes, relay_peer_id: str, peer_id: str) -> bytes:
    """What a peer signs to prove it owns ``peer_id`` to relay ``relay_peer_id``."""
    return _signed(b"peer-auth", server_nonce, relay_peer_id, peer_id)


def relay_auth_message(client_nonce: bytes, relay_peer_id: str, peer_id: str) -> bytes:
    """What a relay signs to prove it owns ``relay_peer_id`` to peer ``peer_id``."""
    return _signed(b"relay-auth", client_nonce, relay_peer_id, peer_id)
