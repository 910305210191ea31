"""STUN (RFC 5389 / RFC 8489) on top of aioice's codec: strict parsing and binding helpers.

aioice 0.13 supplies the message codec (:class:`aioice.stun.Message`,
:func:`aioice.stun.parse_message`). Its parser raises whatever the standard library
raises on garbage (``ValueError``, ``struct.error``, ``UnicodeDecodeError``...) and does
not check the magic cookie, so :func:`parse_stun_untrusted` checks the framing first
and converts every failure into :class:`StunParseError`.

:class:`StunTransaction` is the sans-IO retransmission timer of a client transaction
(RFC 5389 section 7.2.1): the caller owns the socket and the clock.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from aioice import stun as _aioice_stun
from aioice.stun import Class, Message, Method

from .errors import StunParseError

__all__ = [
    "Class",
    "MAGIC_COOKIE",
    "Message",
    "Method",
    "StunTransaction",
    "TransactionOutcome",
    "binding_request",
    "binding_success_response",
    "error_response",
    "is_stun",
    "mapped_address",
    "other_address_untrusted",
    "parse_stun_untrusted",
]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)

# Every exception type aioice's parser was seen to raise on malformed input.
_AIOICE_PARSE_FAILURES = (
    ValueError,  # includes UnicodeDecodeError, ipaddress errors, unknown Method
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
)

# RFC 5389 section 7.2.1 defaults.
DEFAULT_RTO = 0.5
DEFAULT_MAX_REQUESTS = 7  # Rc
DEFAULT_LAST_WAIT_FACTOR = 16  # Rm


def is_stun(data: bytes) -> bool:
    """Whether ``data`` looks like a STUN message (RFC 7983 first byte 0-3 + magic cookie).

    Cheap framing check only: a ``True`` answer does not mean the message parses.
    """
    return (
        len(data) >= HEADER_LENGTH
        and data[0] <= 3
        and data[4:8] == _COOKIE_BYTES
        and len(data) % 4 == 0
    )


def parse_stun_untrusted(data: bytes) -> Message:
    """Parse a STUN message from the network.

    Checks the header (message type top bits, magic cookie, length) and that every
    attribute lies inside the message, then decodes with aioice. A present
    FINGERPRINT is verified; MESSAGE-INTEGRITY is checked separately with
    ``message.check_message_integrity(key)``.

    Raises:
        StunParseError: the only exception raised, whatever the input.
    """
    data = bytes(data)
    if len(data) < HEADER_LENGTH:
        raise StunParseError(f"STUN message too short ({len(data)} bytes)")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000:
        raise StunParseError("STUN message type has its top two bits set")
    if cookie != MAGIC_COOKIE:
        raise StunParseError("STUN magic cookie mismatch")
    if length % 4 or HEADER_LENGTH + length != len(data):
        raise StunParseError("STUN message length mismatch")
    # aioice silently reads past a truncated last attribute; reject it here.
    pos = HEADER_LENGTH
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunParseError("STUN attribute header truncated")
        _, attr_len = struct.unpack_from("!HH", data, pos)
        pos += 4 + attr_len + (-attr_len % 4)
        if pos > len(data):
            raise StunParseError("STUN attribute value truncated")
    try:
        return _aioice_stun.parse_message(data)
    except _AIOICE_PARSE_FAILURES as exc:
        raise StunParseError(f"invalid STUN message: {exc}") from exc


def binding_request(transaction_id: bytes | None = None) -> Message:
    """A Binding request (no credentials): the caller adds attributes and integrity."""
    if transaction_id is not None and len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    return Message(
        message_method=Method.BINDING,
        message_class=Class.REQUEST,
        transaction_id=transaction_id or os.urandom(12),
    )


def binding_success_response(
    request: Message, addr: tuple[str, int], integrity_key: bytes | None = None
) -> bytes:
    """Encode the success response to a Binding ``request`` seen from ``addr``.

    Carries XOR-MAPPED-ADDRESS (IPv4 or IPv6) and the request's transaction id, then
    MESSAGE-INTEGRITY when ``integrity_key`` is given (ICE checks), and FINGERPRINT.
    """
    response = Message(
        message_method=Method.BINDING,
        message_class=Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = (str(addr[0]), int(addr[1]))
    if integrity_key is not None:
        response.add_message_integrity(integrity_key)
    else:
        response.add_fingerprint()
    return bytes(response)


def error_response(
    request: Message, code: int, reason: str, integrity_key: bytes | None = None
) -> bytes:
    """Encode an error response (ERROR-CODE) to ``request``, signed when a key is given."""
    response = Message(
        message_method=request.message_method,
        message_class=Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (code, reason)
    if integrity_key is not None:
        response.add_message_integrity(integrity_key)
    else:
        response.add_fingerprint()
    return bytes(response)


def mapped_address(message: Message) -> tuple[str, int] | None:
    """The reflexive address of a Binding response (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS)."""
    value = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get("MAPPED-ADDRESS")
    return (value[0], value[1]) if value is not None else None


OTHER_ADDRESS = 0x802C  # RFC 5780 section 7.4 (aioice 0.13 does not decode it)


def other_address_untrusted(data: bytes) -> tuple[str, int] | None:
    """The OTHER-ADDRESS of a Binding response (RFC 5780): the server's second IP and
    port for NAT behaviour tests, or None when the server offers no second address.

    Raises:
        StunParseError: the only exception raised, whatever the input.
    """
    data = bytes(data)
    pos = HEADER_LENGTH
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4 : pos + 4 + attr_len]
        if len(value) != attr_len:
            raise StunParseError("STUN attribute value truncated")
        if attr_type == OTHER_ADDRESS:
            if attr_len == 8 and value[1] == 1:
                return str(ipaddress.IPv4Address(value[4:8])), struct.unpack_from("!H", value, 2)[0]
            if attr_len == 20 and value[1] == 2:
                return str(ipaddress.IPv6Address(value[4:20])), struct.unpack_from("!H", value, 2)[
                    0
                ]
            raise StunParseError("OTHER-ADDRESS has an invalid family or length")
        pos += 4 + attr_len + (-attr_len % 4)
    return None


@dataclass(frozen=True)
class TransactionOutcome:
    """What :meth:`StunTransaction.handle_timeout` asks the caller to do."""

    retransmit: bool
    timed_out: bool


class StunTransaction:
    """Retransmission schedule of one STUN client transaction (RFC 5389 section 7.2.1).

    Requests go out at ``start``, then after RTO, 2*RTO, 4*RTO... up to
    ``max_requests`` in total; the transaction times out ``last_wait_factor * RTO``
    after the last request. The caller sends :attr:`data` when told to.
    """

    def __init__(
        self,
        data: bytes,
        now: float,
        *,
        rto: float = DEFAULT_RTO,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        last_wait_factor: float = DEFAULT_LAST_WAIT_FACTOR,
    ) -> None:
        self.data = data
        self.requests_sent = 1
        self._rto = rto
        self._interval = rto
        self._max_requests = max_requests
        self._last_wait_factor = last_wait_factor
        self._deadline = now + (rto if max_requests > 1 else rto * last_wait_factor)

    def poll_timeout(self) -> float:
        """When :meth:`handle_timeout` must next be called."""
        return self._deadline

    def handle_timeout(self, now: float) -> TransactionOutcome:
        """Advance the schedule: retransmit, time out, or nothing yet."""
        if now < self._deadline:
            return TransactionOutcome(retransmit=False, timed_out=False)
        if self.requests_sent >= self._max_requests:
            return TransactionOutcome(retransmit=False, timed_out=True)
        self.requests_sent += 1
        self._interval *= 2
        if self.requests_sent >= self._max_requests:
            self._deadline = now + self._rto * self._last_wait_factor
        else:
            self._deadline = now + self._interval
        return TransactionOutcome(retransmit=True, timed_out=False)
