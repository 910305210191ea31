"""The node-to-node mesh protocol ``darkswap-mesh/1`` (docs/PROTOCOL.md section 15): frames.

A mesh link is one WebSocket from one relay node to another's signaling port, path
:data:`MESH_PATH`. Text frames carry the JSON messages below (the same envelope as the
signaling protocol, ``{"type": ..., "payload": {...}}``); binary frames are the
circuit DATA and CREDIT frames of section 5.1, byte for byte (a relay forwards a
peer's DATA frame to the link unchanged, and the other node forwards it to its peer).

Sans-IO: :func:`encode_mesh` and :func:`decode_mesh_untrusted` (raises only
:class:`MeshParseError`, a ParseError). Relay ids are 16 bytes here, UUID text on the wire.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import uuid
from dataclasses import dataclass, fields
from hashlib import sha256
from typing import Any

from darkswap_trio.proto.errors import ParseError
from darkswap_trio.proto.signaling import CircuitLimits

MESH_PROTOCOL = "darkswap-mesh/1"
MESH_PATH = "/mesh"
NONCE_LENGTH = 32
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 512
_LIMIT_FIELDS = ("duration", "data", "bandwidth", "window", "max_data_frame")


class MeshParseError(ParseError):
    """A mesh frame is malformed (the link is closed: nodes do not send bad frames)."""


# -- messages (field kinds in _KINDS: how each field is checked and encoded) -----------


@dataclass(frozen=True, slots=True)
class MeshHello:
    """Dialer -> acceptor: who I am, whom I expect, my nonce."""

    node: str  # the dialing node's relay PeerId
    to: str  # the PeerId the dialer expects to reach
    nonce: bytes
    protocol: str = MESH_PROTOCOL


@dataclass(frozen=True, slots=True)
class MeshChallenge:
    """Acceptor -> dialer: its id, its nonce, its proof over the dialer's nonce."""

    node: str
    nonce: bytes
    signature: bytes
    mac: bytes  # cluster membership proof (empty when the cluster has no secret)


@dataclass(frozen=True, slots=True)
class MeshAuth:
    """Dialer -> acceptor: its proof over the acceptor's nonce."""

    signature: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class MeshReady:
    """Acceptor -> dialer: the link is up."""


@dataclass(frozen=True, slots=True)
class MeshError:
    """Either way, then the link closes (a handshake refusal or a protocol violation)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class MeshOpen:
    """Open the far end of circuit ``relay_id``: ``from_`` (on the sender) to ``to``."""

    relay_id: bytes
    from_: str
    to: str
    limits: CircuitLimits


@dataclass(frozen=True, slots=True)
class MeshOpened:
    """The far end is open (``to`` was told ``DataChannel``); ``limits`` as agreed."""

    relay_id: bytes
    limits: CircuitLimits


@dataclass(frozen=True, slots=True)
class MeshRefused:
    """The far end refused circuit ``relay_id`` (``code`` as in RelayResponse)."""

    relay_id: bytes
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class MeshClose:
    """Circuit ``relay_id`` closed on the sender's side; tell the local end ``reason``."""

    relay_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class MeshPing:
    """Liveness: the receiver answers MeshPong (any frame resets the link's timer)."""


@dataclass(frozen=True, slots=True)
class MeshPong:
    pass


MeshMessage = (
    MeshHello
    | MeshChallenge
    | MeshAuth
    | MeshReady
    | MeshError
    | MeshOpen
    | MeshOpened
    | MeshRefused
    | MeshClose
    | MeshPing
    | MeshPong
)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        MeshHello,
        MeshChallenge,
        MeshAuth,
        MeshReady,
        MeshError,
        MeshOpen,
        MeshOpened,
        MeshRefused,
        MeshClose,
        MeshPing,
        MeshPong,
    )
}
# attribute -> (wire key, kind)
_KINDS: dict[str, tuple[str, str]] = {
    "node": ("node", "id"),
    "to": ("to", "id"),
    "from_": ("from", "id"),
    "nonce": ("nonce", "nonce"),
    "protocol": ("protocol", "text"),
    "signature": ("signature", "b64"),
    "mac": ("mac", "b64"),
    "code": ("code", "text"),
    "message": ("message", "text"),
    "reason": ("reason", "text"),
    "relay_id": ("relay_id", "rid"),
    "limits": ("limits", "limits"),
}


def encode_mesh(msg: MeshMessage) -> str:
    payload: dict[str, Any] = {}
    for f in fields(msg):
        key, kind = _KINDS[f.name]
        value = getattr(msg, f.name)
        if kind in ("b64", "nonce"):
            value = base64.b64encode(value).decode("ascii")
        elif kind == "rid":
            value = str(uuid.UUID(bytes=value))
        elif kind == "limits":
            value = {name: getattr(value, name) for name in _LIMIT_FIELDS}
        payload[key] = value
    return json.dumps({"type": type(msg).__name__, "payload": payload}, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise MeshParseError(f"non-standard JSON constant {name}")


def _decode_value(kind: str, key: str, value: Any) -> Any:
    if kind in ("id", "text"):
        limit = MAX_ID_LENGTH if kind == "id" else MAX_TEXT_LENGTH
        if not isinstance(value, str) or not value or len(value) > limit:
            raise MeshParseError(f"field {key!r} must be a string of 1..{limit} characters")
        return value
    if kind in ("b64", "nonce"):
        if not isinstance(value, str):
            raise MeshParseError(f"field {key!r} must be base64 text")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MeshParseError(f"field {key!r} is not valid base64") from None
        if kind == "nonce" and len(raw) != NONCE_LENGTH:
            raise MeshParseError(f"field {key!r} must be {NONCE_LENGTH} bytes")
        if len(raw) > 256:
            raise MeshParseError(f"field {key!r} is too long")
        return raw
    if kind == "rid":
        if not isinstance(value, str) or len(value) != 36:
            raise MeshParseError(f"field {key!r} must be a UUID")
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            raise MeshParseError(f"field {key!r} must be a UUID") from None
    if kind == "limits":
        if not isinstance(value, dict):
            raise MeshParseError(f"field {key!r} must be an object")
        args: dict[str, Any] = {}
        for name in _LIMIT_FIELDS:
            v = value.get(name, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 2**53:
                raise MeshParseError(f"field {key}.{name} must be a non-negative number")
            args[name] = float(v) if name == "duration" else int(v)
        return CircuitLimits(**args)
    raise AssertionError(kind)  # pragma: no cover


def decode_mesh_untrusted(text: str) -> MeshMessage:
    """Parse one text frame of a mesh link. Raises only MeshParseError."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except MeshParseError:
        raise
    except (ValueError, RecursionError, TypeError):
        raise MeshParseError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MeshParseError("frame must be a JSON object")
    name = obj.get("type")
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise MeshParseError(f"unknown mesh message type {str(name)[:64]!r}")
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise MeshParseError(f"{name} needs a 'payload' object")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key, kind = _KINDS[f.name]
        if key not in payload:
            if f.name == "protocol":
                raise MeshParseError(f"{name} lacks field {key!r}")
            if f.name == "mac":
                kwargs[f.name] = b""
                continue
            raise MeshParseError(f"{name} lacks field {key!r}")
        if kind == "b64" and payload[key] == "":
            kwargs[f.name] = b""
            continue
        kwargs[f.name] = _decode_value(kind, key, payload[key])
    message: MeshMessage = cls(**kwargs)
    return message


# -- what nodes sign (section 15.2) ------------------------------------------------------


def node_auth_message(nonce: bytes, signer: str, verifier: str) -> bytes:
    """What node ``signer`` signs to prove its PeerId to node ``verifier``."""
    return (
        b"darkswap-mesh/1 node-auth\0"
        + signer.encode("ascii")
        + b"\0"
        + verifier.encode("ascii")
        + b"\0"
        + nonce
    )


def cluster_mac(secret: bytes, nonce: bytes, signer: str, verifier: str) -> bytes:
    """HMAC-SHA256 over the same transcript with the cluster secret (b"" without one)."""
    if not secret:
        return b""
    return hmac.new(
        secret, b"cluster\0" + node_auth_message(nonce, signer, verifier), sha256
    ).digest()
