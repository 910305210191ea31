"""WebSocket framing (RFC 6455 sections 5 and 7) as a sans-IO core.

:class:`WebSocketCore` is the connection after the opening handshake: feed it bytes with
:meth:`~WebSocketCore.receive`, drain :meth:`~WebSocketCore.poll_event` (messages, pings,
pongs, close) and :meth:`~WebSocketCore.poll_transmit` (automatic replies: pong, close
echo, protocol-error close). Sending returns the encoded bytes directly
(:meth:`~WebSocketCore.send_message`), so the driver writes them in one ``send_all``.
WebSocket has no timers of its own; the closing-handshake timeout belongs to the driver.

Performance notes (why the code looks the way it does): the relay forwards 64 KiB binary
messages, so the receive path never copies a payload more than needed. A chunk that
arrives while nothing is buffered is parsed in place (no copy into a bytearray), and a
payload is unmasked with one big-integer XOR instead of a per-byte Python loop.

Memory under abuse (issue #10 item 6): with ``discard_above`` set (the relay sets its
``max_frame_size``), an unfragmented data frame longer than that, but within
``max_message_size``, is never buffered: :class:`MessageDiscarded` is reported as soon as
its header is parsed and its payload is dropped as it arrives. A receiving core then
holds at most one frame of up to ``discard_above`` bytes plus what one read appended.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from dataclasses import dataclass

from ._frames import (
    MAX_CONTROL_PAYLOAD,
    CloseCode,
    Frame,
    Opcode,
    WebSocketProtocolError,
    _parse_header,
    apply_mask,
    apply_mask_pure,
    encode_close_payload,
    encode_frame,
    encode_frame_header,
    is_valid_close_code,
    parse_close_payload_untrusted,
    parse_frame_untrusted,
)

# The frame codec lives in websocket_frames; its names are re-exported from here.
__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "CloseCode",
    "CloseReceived",
    "ConnectionState",
    "Frame",
    "MessageDiscarded",
    "MessageReceived",
    "Opcode",
    "PingReceived",
    "PongReceived",
    "ProtocolFailed",
    "WebSocketCore",
    "WebSocketEvent",
    "WebSocketProtocolError",
    "apply_mask",
    "apply_mask_pure",
    "encode_close_payload",
    "encode_frame",
    "encode_frame_header",
    "is_valid_close_code",
    "parse_close_payload_untrusted",
    "parse_frame_untrusted",
]

# Mask keys fetched from the OS CSPRNG at once (4 bytes each).
_MASK_BATCH = 256
# Client messages below this size are framed and masked whole (prefix and payload joined:
# a small copy, one mask call and no header call), larger ones in two parts.
_WHOLE_CLIENT_FRAME = 1024

# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete data message: ``str`` for a text message, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class MessageDiscarded:
    """A data message of ``size`` bytes, above ``discard_above``: its payload is skipped
    unread (never buffered). ``len()`` is its size, so a size check treats it like the
    message it replaces."""

    size: int

    def __len__(self) -> int:
        return self.size


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged us; the pong is already queued in :meth:`WebSocketCore.poll_transmit`."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer closed (cleanly). If we had not closed yet, the echo is queued."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailed:
    """The peer broke the protocol; a close frame with ``code`` is queued (if allowed)."""

    code: int
    reason: str


WebSocketEvent = (
    MessageReceived
    | MessageDiscarded
    | PingReceived
    | PongReceived
    | CloseReceived
    | ProtocolFailed
)


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSE_SENT = "close-sent"  # we sent close, waiting for the peer's
    CLOSED = "closed"  # close frames went both ways, or the protocol failed


class WebSocketCore:
    """One side of an established WebSocket connection (no handshake, no I/O, no clock).

    Memory: an idle core holds no buffer (``_buffer`` is the shared empty bytes), which
    matters for a relay with thousands of idle peers.
    """

    __slots__ = (
        "is_client",
        "max_message_size",
        "discard_above",
        "state",
        "close_sent",
        "_buffer",
        "_pos",
        "_missing",
        "_skip",
        "_fragments",
        "_fragments_size",
        "_fragment_opcode",
        "_transmits",
        "_masks",
        "_mask_pos",
    )

    def __init__(
        self,
        *,
        is_client: bool,
        max_message_size: int = 1 << 20,
        discard_above: int | None = None,
    ) -> None:
        self.is_client = is_client
        self.max_message_size = max_message_size
        self.discard_above = discard_above
        self.state = ConnectionState.OPEN
        self.close_sent = False
        self._buffer: bytes | bytearray = b""
        self._pos = 0
        self._missing = 2
        self._skip = 0  # payload bytes of a discarded frame still to drop on arrival
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragment_opcode = 0
        self._transmits: deque[bytes] | None = None
        self._masks = b""  # mask keys drawn from the OS CSPRNG in batches (clients only)
        self._mask_pos = 0

    # -- input --

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the peer. Parsing happens lazily in :meth:`poll_event`.

        ``data`` is not kept: a caller may reuse its buffer after the call.
        """
        if not data or self.state is ConnectionState.CLOSED:
            return
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            if n == len(data):
                return
            data = data[n:]
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._buffer
        pos = self._pos
        if pos >= len(buf):
            # Nothing buffered: keep the chunk as is and parse it in place.
            self._buffer = data
            self._pos = 0
        elif type(buf) is bytearray:
            if pos:
                del buf[:pos]  # O(1) in CPython: moves the start pointer.
                self._pos = 0
            buf += data
        else:
            new = bytearray(memoryview(buf)[pos:])
            new += data
            self._buffer = new
            self._pos = 0
        self._missing -= len(data)

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet turned into events."""
        return len(self._buffer) - self._pos

    @property
    def bytes_missing(self) -> int:
        """A lower bound of the bytes needed to complete the frame being received.

        The driver uses it to size its next read: a 64 KiB frame is read in one go.
        """
        return self._skip or max(self._missing, 1)

    @property
    def skipping(self) -> int:
        """Payload bytes of a discarded message still to arrive (they will be dropped)."""
        return self._skip

    def receive_message(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """:meth:`receive`, returning the message itself when ``data`` is exactly one
        whole unfragmented binary frame of under 64 KiB and nothing else is pending
        (the shape of nearly every read in a round trip): no event is queued for it.

        Otherwise (None) ``data`` was taken as by :meth:`receive`: drain
        :meth:`poll_event`. Either way the same messages come out in the same order.
        """
        n = len(data)
        if (
            n >= 2
            and data[0] == 0x82  # FIN, no reserved bits, binary
            and not self._buffer
            and self.state is ConnectionState.OPEN
            and not self._skip
            and self._fragments is None
            and type(data) is bytes
        ):
            b1 = data[1]
            length = b1 & 0x7F
            header_length = 2
            if length == 126 and n >= 4:
                length = (data[2] << 8) | data[3]
                header_length = 4
            masked = b1 & 0x80
            if masked:
                header_length += 4
            discard_above = self.discard_above
            if (
                header_length + length == n
                and b1 & 0x7F != 127  # a 64-bit length: left to the general parser
                and (masked == 0) == self.is_client  # masked exactly when we are the server
                and length <= self.max_message_size
                and (discard_above is None or length <= discard_above)
            ):
                if not masked:
                    return data[header_length:]
                key = data[header_length - 4 : header_length]
                return apply_mask(memoryview(data)[header_length:], key)
        self.receive(data)
        return None

    def poll_event(self) -> WebSocketEvent | None:
        """The next event parsed from received bytes, or None when more input is needed."""
        if not self._buffer and self.state is not ConnectionState.CLOSED:
            return None  # nothing received (_missing is already 2: a header)
        while True:
            if self.state is ConnectionState.CLOSED:
                self._release_buffer()
                return None
            buf = self._buffer
            pos = self._pos
            try:
                parsed = _parse_header(
                    buf, pos, not self.is_client, self.max_message_size, self.discard_above
                )
                if type(parsed) is int:
                    self._missing = parsed
                    return None
                b0, header_length, length, mask_key, opcode = parsed  # type: ignore[misc]
                start = pos + header_length
                end = start + length
                if self.discard_above is not None and opcode < 0x8 and length > self.discard_above:
                    if self._fragments is not None:
                        raise WebSocketProtocolError("new data frame inside a fragmented message")
                    return self._discard(buf, start, end, length)
                if type(buf) is bytes:
                    if mask_key is None:
                        payload = buf[start:end]
                    else:
                        payload = apply_mask(memoryview(buf)[start:end], mask_key)
                else:
                    with memoryview(buf) as view:
                        if mask_key is None:
                            payload = bytes(view[start:end])
                        else:
                            payload = apply_mask(view[start:end], mask_key)
                if end >= len(buf):
                    self._buffer = b""
                    self._pos = 0
                else:
                    self._pos = end
                self._missing = 2
                event = self._handle_frame(opcode, payload, b0 & 0x80)
            except WebSocketProtocolError as exc:
                return self._fail(exc.close_code, str(exc))
            if event is not None:
                return event

    def _discard(
        self, buf: bytes | bytearray, start: int, end: int, length: int
    ) -> MessageDiscarded:
        """Drop an oversize frame's payload: what is buffered now, the rest on arrival."""
        if end >= len(buf):
            self._skip = end - len(buf)
            self._buffer = b""
            self._pos = 0
        else:
            self._pos = end
        self._missing = 2
        return MessageDiscarded(length)

    def _handle_frame(self, opcode: int, payload: bytes, fin: int) -> WebSocketEvent | None:
        if opcode == Opcode.BINARY or opcode == Opcode.TEXT:
            if self._fragments is not None:
                raise WebSocketProtocolError("new data frame inside a fragmented message")
            if fin:
                return MessageReceived(payload if opcode == Opcode.BINARY else _decode(payload))
            self._fragments = [payload]
            self._fragments_size = len(payload)
            self._fragment_opcode = opcode
            return None
        if opcode == Opcode.CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                raise WebSocketProtocolError("continuation frame without a message to continue")
            self._fragments_size += len(payload)
            if self._fragments_size > self.max_message_size or (
                self.discard_above is not None and self._fragments_size > self.discard_above
            ):
                raise WebSocketProtocolError("message larger than the size limit", 1009)
            fragments.append(payload)
            if not fin:
                return None
            self._fragments = None
            data = b"".join(fragments)
            return MessageReceived(
                data if self._fragment_opcode == Opcode.BINARY else _decode(data)
            )
        if opcode == Opcode.PING:
            if not self.close_sent:
                self._queue(encode_frame(Opcode.PONG, payload, mask_key=self._mask_key()))
            return PingReceived(payload)
        if opcode == Opcode.PONG:
            return PongReceived(payload)
        # Opcode.CLOSE (the header parser rejected every other opcode).
        code, reason = parse_close_payload_untrusted(payload)
        if not self.close_sent:
            # Echo the peer's code (RFC 6455 5.5.1); 1005 encodes as an empty body.
            self._queue(self._close_frame(code, ""))
        self.state = ConnectionState.CLOSED
        self._release_buffer()
        return CloseReceived(code, reason)

    def _fail(self, code: int, reason: str) -> ProtocolFailed:
        if not self.close_sent:
            self._queue(self._close_frame(code, reason))
        self.state = ConnectionState.CLOSED
        self._release_buffer()
        return ProtocolFailed(code, reason)

    def _release_buffer(self) -> None:
        self._buffer = b""
        self._pos = 0
        self._skip = 0
        self._fragments = None

    # -- output --

    def poll_transmit(self) -> bytes | None:
        """Next automatic reply to write (pong, close echo, error close), or None."""
        transmits = self._transmits
        if not transmits:
            return None
        data = transmits.popleft()
        if not transmits:
            self._transmits = None
        return data

    def _queue(self, data: bytes) -> None:
        if self._transmits is None:
            self._transmits = deque()
        self._transmits.append(data)

    def _mask_key(self) -> bytes | None:
        # RFC 6455 5.3: the key must be unpredictable, so it comes from the OS CSPRNG,
        # in batches (one getrandom() per _MASK_BATCH frames, not one per frame).
        if not self.is_client:
            return None
        pos = self._mask_pos
        if pos >= len(self._masks):
            self._masks = os.urandom(4 * _MASK_BATCH)
            pos = 0
        self._mask_pos = pos + 4
        return self._masks[pos : pos + 4]

    def send_message(self, message: str | bytes | bytearray | memoryview) -> bytes:
        """Encode a whole message as one frame: text for ``str``, binary otherwise."""
        if self.close_sent or self.state is ConnectionState.CLOSED:
            raise RuntimeError("cannot send a message after the close handshake started")
        if isinstance(message, str):
            return encode_frame(Opcode.TEXT, message.encode("utf-8"), mask_key=self._mask_key())
        return encode_frame(Opcode.BINARY, message, mask_key=self._mask_key())

    def send_message_parts(
        self, message: str | bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes | bytearray | memoryview]:
        """:meth:`send_message` as ``(header, payload)``: a vectored write (``writev``)
        sends both without the joined copy (64 KiB per relayed frame)."""
        if self.close_sent or self.state is ConnectionState.CLOSED:
            raise RuntimeError("cannot send a message after the close handshake started")
        if not self.is_client and type(message) is bytes:
            # A relay's forward of a short message (a round trip's): the header directly
            size = len(message)
            if size < 126:
                return bytes((0x82, size)), message
            if size < 0x10000:
                return bytes((0x82, 126, size >> 8, size & 0xFF)), message
        payload: bytes | bytearray | memoryview
        if isinstance(message, str):
            opcode, payload = Opcode.TEXT, message.encode("utf-8")
        else:
            opcode, payload = Opcode.BINARY, message
        mask_key = self._mask_key()
        header = encode_frame_header(opcode, len(payload), mask_key=mask_key)
        return header, payload if mask_key is None else apply_mask(payload, mask_key)

    def send_binary_parts(
        self, prefix: bytes, payload: bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes | bytearray | memoryview]:
        """A binary message ``prefix + payload`` as ``(header, rest)``, never joining the
        two: ``header`` is the frame header with the (masked) ``prefix``, ``rest`` the
        (masked) ``payload``. A vectored write sends a small protocol header in front of a
        large payload with one copy (the mask) on a client and none on a server. A client
        message under 1 KiB comes whole in ``header`` (``rest`` is empty)."""
        if self.close_sent or self.state is ConnectionState.CLOSED:
            raise RuntimeError("cannot send a message after the close handshake started")
        size = len(prefix) + len(payload)
        if size < _WHOLE_CLIENT_FRAME and self.is_client:
            pos = self._mask_pos  # _mask_key(), inline
            if pos >= len(self._masks):
                self._masks = os.urandom(4 * _MASK_BATCH)
                pos = 0
            self._mask_pos = pos + 4
            key = self._masks[pos : pos + 4]
            # A short client message (a round trip's): the whole frame as ``header``,
            # built and masked in one go (one mask call instead of two, no header call).
            masked = apply_mask(prefix + payload, key)
            if size < 126:
                return bytes((0x82, 0x80 | size)) + key + masked, b""
            return bytes((0x82, 0xFE, size >> 8, size & 0xFF)) + key + masked, b""
        mask_key = self._mask_key()
        header = encode_frame_header(Opcode.BINARY, size, mask_key=mask_key)
        if mask_key is None:
            return header + prefix, payload
        # The payload continues the prefix's masking phase: rotate the key to match.
        shift = len(prefix) & 3
        rest_key = mask_key[shift:] + mask_key[:shift] if shift else mask_key
        return header + apply_mask(prefix, mask_key), apply_mask(payload, rest_key)

    def send_ping(self, payload: bytes = b"") -> bytes:
        return self._control(Opcode.PING, payload)

    def send_pong(self, payload: bytes = b"") -> bytes:
        """An unsolicited pong (a heartbeat that expects no answer)."""
        return self._control(Opcode.PONG, payload)

    def _control(self, opcode: Opcode, payload: bytes) -> bytes:
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("control frame payload longer than 125 bytes")
        if self.close_sent or self.state is ConnectionState.CLOSED:
            raise RuntimeError("cannot send after the close handshake started")
        return encode_frame(opcode, payload, mask_key=self._mask_key())

    def send_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake; returns b"" if a close frame was already sent."""
        if self.close_sent:
            return b""
        frame = self._close_frame(code, reason)
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.CLOSE_SENT
        return frame

    def _close_frame(self, code: int, reason: str) -> bytes:
        self.close_sent = True
        return encode_frame(
            Opcode.CLOSE, encode_close_payload(code, reason), mask_key=self._mask_key()
        )


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketProtocolError("text message is not valid UTF-8", 1007) from None
